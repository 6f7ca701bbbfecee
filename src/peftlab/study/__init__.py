"""The comparative study: tasks (data + model + metric), isolated runs, results, reports and plots.

    peftlab compare                       # the default study (MiniLM, tweet sentiment, every survey method)
    peftlab compare --task topic --methods lora,bitfit --seeds 3 --budget params=1% --out runs/topic
    peftlab report runs/topic             # rebuild report.md / report.html from results.jsonl
"""
