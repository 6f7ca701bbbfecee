"""The reaction BERT of rxnfp (Schwaller et al., 2021: a 12-layer BERT, hidden 256, pretrained with masked language
modelling on USPTO reaction SMILES) as a study model: weights converted once to safetensors under the peftlab
cache, and a fast tokenizer that splits SMILES with rxnfp's regular expression (one token per atom, bond, ring
digit or bracket atom) before looking tokens up in its vocabulary, as rxnfp's SmilesTokenizer does.
"""

from __future__ import annotations

from pathlib import Path

from peftlab.study.data.assets import package_dir

# rxnfp.tokenization.SMI_REGEX_PATTERN (the package is not imported: it needs RDKit)
SMILES_PATTERN = (r"(\%\([0-9]{3}\)|\[[^\]]+]|Br?|Cl?|N|O|S|P|F|I|b|c|n|o|s|p|\||\(|\)|\.|=|#|-|\+|\\|\/|:|~|@|\?|>>?|"
                  r"\*|\$|\%[0-9]{2}|[0-9])")
SPECIAL = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
           "mask_token": "[MASK]"}


def rxnfp_source() -> Path:
    """The pretrained (not fine-tuned) reaction BERT folder inside the rxnfp package."""
    return package_dir("rxnfp", "rxnfp --no-deps") / "models" / "transformers" / "bert_pretrained"


def smiles_tokenizer(vocab_file: Path):
    """A PreTrainedTokenizerFast: rxnfp's SMILES regex split, whole-token vocabulary lookup, [CLS] ... [SEP]."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(vocab_file.read_text(encoding="utf-8").splitlines())}
    core = Tokenizer(models.WordLevel(vocab, unk_token=SPECIAL["unk_token"]))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(SMILES_PATTERN), behavior="isolated")
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[(t, vocab[t]) for t in ("[CLS]", "[SEP]")])
    return PreTrainedTokenizerFast(tokenizer_object=core, model_max_length=512, **SPECIAL)


def build_rxnfp_folder(folder: Path) -> None:
    """Write the reaction BERT as safetensors + config + tokenizer into `folder` (read from the package's
    pytorch_model.bin by transformers, which loads it with torch.load(weights_only=True): no code runs)."""
    from transformers import BertModel

    source = rxnfp_source()
    BertModel.from_pretrained(source).save_pretrained(folder, safe_serialization=True)
    smiles_tokenizer(source / "vocab.txt").save_pretrained(folder)
