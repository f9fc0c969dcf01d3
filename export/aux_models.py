"""The shared auxiliary models: SSL (chinese-hubert-base) and BERT (chinese-roberta-wwm-ext-large).

Both are built with ``transformers`` from a local folder the user passes; nothing is
downloaded. The demo writes folders of the same shape with random weights from the
architectures' known configs, so one code path serves real and demo files.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub: folders are local
from transformers import BertConfig, BertModel, HubertConfig, HubertModel
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

from export.errors import InputError
from export.onnx_io import GraphSpec

SSL_DIM = 768
BERT_DIM = 1024
BERT_VOCAB = 21128

# chinese-hubert-base is HuBERT base (transformers' HubertConfig defaults); the tiny variant keeps
# the 768 output width that ssl_proj expects.
SSL_CONFIGS = {
    "full": {},
    "tiny": {"num_hidden_layers": 2, "intermediate_size": 768, "conv_dim": [64] * 7,
             "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4},
}
# chinese-roberta-wwm-ext-large is BERT large with the 21128-token Chinese vocab; tiny keeps width 1024.
BERT_CONFIGS = {
    "full": {"vocab_size": BERT_VOCAB, "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
             "intermediate_size": 4096, "max_position_embeddings": 512, "type_vocab_size": 2},
    "tiny": {"vocab_size": BERT_VOCAB, "hidden_size": 1024, "num_hidden_layers": 2, "num_attention_heads": 16,
             "intermediate_size": 1024, "max_position_embeddings": 512, "type_vocab_size": 2},
}
SPECIAL_TOKENS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}


def folder_digest(folder: Path) -> str:
    """Content hash of a model folder (file names and bytes), to share one export across voices."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _require_folder(folder: Path, what: str) -> None:
    if not (folder / "config.json").is_file():
        raise InputError(f"{folder}: no config.json; pass the local {what} folder (as downloaded from its model page)")


def load_ssl(folder: Path) -> tuple[HubertModel, bool]:
    """HuBERT from a local folder; also returns whether inputs are mean/variance normalized."""
    folder = Path(folder)
    _require_folder(folder, "chinese-hubert-base")
    model = HubertModel.from_pretrained(str(folder), attn_implementation="eager").eval()
    if model.config.hidden_size != SSL_DIM:
        raise InputError(f"{folder}: hidden_size {model.config.hidden_size}, GPT-SoVITS v2 needs {SSL_DIM} (chinese-hubert-base)")
    pre = folder / "preprocessor_config.json"
    normalize = json.loads(pre.read_text()).get("do_normalize", True) if pre.is_file() else True
    return model, bool(normalize)


def load_bert(folder: Path) -> BertModel:
    folder = Path(folder)
    _require_folder(folder, "chinese-roberta-wwm-ext-large")
    if not (folder / "vocab.txt").is_file():
        raise InputError(f"{folder}: no vocab.txt; the BERT folder needs its tokenizer vocabulary")
    model = BertModel.from_pretrained(str(folder), attn_implementation="eager", add_pooling_layer=False).eval()
    if model.config.hidden_size != BERT_DIM:
        raise InputError(f"{folder}: hidden_size {model.config.hidden_size}, GPT-SoVITS v2 needs {BERT_DIM}")
    return model


def _demo_vocab() -> list[str]:
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += list("，。！？、；：“”‘’（）《》…—,.!?;:'\"()-")
    code = 0x4E00
    while len(vocab) < BERT_VOCAB:
        vocab.append(chr(code))
        code += 1
    return vocab


def write_demo_aux(out_dir: Path, size: str, seed: int) -> tuple[Path, Path]:
    """Random-weight SSL and BERT folders in the layout of the real ones."""
    torch.manual_seed(seed)
    ssl_dir, bert_dir = out_dir / "chinese-hubert-base", out_dir / "chinese-roberta-wwm-ext-large"
    HubertModel(HubertConfig(**SSL_CONFIGS[size])).save_pretrained(str(ssl_dir))
    (ssl_dir / "preprocessor_config.json").write_text(json.dumps(
        {"do_normalize": True, "feature_size": 1, "padding_side": "right", "padding_value": 0,
         "return_attention_mask": False, "sampling_rate": 16000}, indent=1))
    BertModel(BertConfig(**BERT_CONFIGS[size]), add_pooling_layer=False).save_pretrained(str(bert_dir))
    (bert_dir / "vocab.txt").write_text("\n".join(_demo_vocab()) + "\n", encoding="utf-8")
    return ssl_dir, bert_dir


class SSLGraph(torch.nn.Module):
    """16 kHz waveform -> SSL features at 50 Hz, [B, 768, T] (upstream's last_hidden_state, transposed)."""

    def __init__(self, model: HubertModel, normalize: bool):
        super().__init__()
        self.model = model
        self.normalize = normalize

    def forward(self, wav16k: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            mean = wav16k.mean(dim=1, keepdim=True)
            var = ((wav16k - mean) ** 2).mean(dim=1, keepdim=True)
            wav16k = (wav16k - mean) / torch.sqrt(var + 1e-7)
        return self.model(wav16k).last_hidden_state.transpose(1, 2)


class BertGraph(torch.nn.Module):
    """Token ids -> the third-from-last hidden layer, which GPT-SoVITS feeds to the GPT."""

    def __init__(self, model: BertModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # One sentence per call, no padding: an all-ones attention mask is what upstream passes.
        out = self.model(input_ids=input_ids, output_hidden_states=True)
        return out.hidden_states[-3]


@dataclass
class AuxGraphs:
    ssl: GraphSpec
    bert: GraphSpec


def ssl_spec(model: HubertModel, normalize: bool) -> GraphSpec:
    return GraphSpec(
        name="ssl", module=SSLGraph(model, normalize), args=(torch.randn(1, 32000) * 0.1,),
        input_names=["wav16k"], output_names=["ssl"],
        dynamic_axes={"wav16k": {0: "batch", 1: "samples"}, "ssl": {0: "batch", 2: "frames"}},
        metadata={"model_type": "gpt-sovits-ssl", "sample_rate": 16000, "frame_rate": 50,
                  "dim": SSL_DIM, "normalize": normalize},
    )


def bert_spec(model: BertModel) -> GraphSpec:
    ids = torch.tensor([[101, 2000, 2001, 2002, 102]], dtype=torch.int64)
    return GraphSpec(
        name="bert", module=BertGraph(model), args=(ids,),
        input_names=["input_ids"], output_names=["hidden"],
        dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "hidden": {0: "batch", 1: "tokens"}},
        metadata={"model_type": "gpt-sovits-bert", "dim": BERT_DIM, "layer": -3,
                  "vocab_size": int(model.config.vocab_size)},
    )
