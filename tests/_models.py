"""Tiny random-weight CLIP-family checkpoints, built from configs and saved like hub ones.

No test downloads anything: each builder writes ``config.json``, ``model.safetensors``,
the tokenizer files and ``preprocessor_config.json`` into a directory, exactly the layout
``from_pretrained`` reads from the hub cache. With ``processor=True`` the tokenizer and
image processor are saved together through the family's processor class instead, in the
layout the installed transformers gives a user's own save (``processor_config.json`` with
the image processor nested in it, and no ``preprocessor_config.json``).
"""

from __future__ import annotations

import io
from pathlib import Path

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
CORPUS = [
    "a photo of a cat",
    "a photo of a dog",
    "a red car on a highway",
    "the quick brown fox jumps over the lazy dog",
    "an image of a bird sitting on a tree branch",
    "two people walking on the beach at sunset",
    "a bowl of fruit on a wooden table",
    "a black and white photograph of a city street",
] * 4


def _byte_level_bpe(extra_merges: int = 40) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A small byte-level BPE vocabulary in CLIP's format (``</w>`` word ends), learned from CORPUS."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|startoftext|>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    import json

    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    vocab = dict(model["vocab"])
    # CLIP's vocabulary also holds every byte symbol with the word-end suffix.
    for sym in pre_tokenizers.ByteLevel.alphabet():
        vocab.setdefault(sym + "</w>", len(vocab))
    return vocab, merges


def tiny_clip(path: Path, *, seed: int = 0, image_size: int = 32, processor: bool = False) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab, merges = _byte_level_bpe()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    text = dict(TEXT, vocab_size=len(vocab), max_position_embeddings=77,
                bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"])
    config = CLIPConfig(text_config=text, vision_config=dict(VISION, image_size=image_size), projection_dim=24)
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    model.save_pretrained(path)
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    if processor:
        CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    else:
        tokenizer.save_pretrained(path)
        image_processor.save_pretrained(path)
    return path


def _spm_model() -> bytes:
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=buf, vocab_size=120, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2, hard_vocab_limit=False,
    )
    return buf.getvalue()


def tiny_siglip(
    path: Path, *, seed: int = 0, tokenizer: str = "sentencepiece", image_size: int = 32, processor: bool = False
) -> Path:
    """SigLIP; ``tokenizer="gemma"`` gives the fixed-resolution SigLIP2 layout (SigLIP
    weights with SigLIP2's lower-casing Gemma BPE tokenizer)."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

    path.mkdir(parents=True, exist_ok=True)
    if tokenizer == "sentencepiece":
        from transformers import SiglipTokenizer

        (path / "spiece.model").write_bytes(_spm_model())
        tok = SiglipTokenizer(vocab_file=str(path / "spiece.model"))
    else:
        from transformers import Siglip2Tokenizer

        vocab, merges = _gemma_bpe()
        tok = Siglip2Tokenizer(vocab=vocab, merges=merges)
    text = dict(TEXT, vocab_size=len(tok), max_position_embeddings=64, pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id, bos_token_id=None)
    config = SiglipConfig(text_config=text, vision_config=dict(VISION, image_size=image_size))
    torch.manual_seed(seed)
    model = SiglipModel(config).eval()
    model.save_pretrained(path)
    image_processor = SiglipImageProcessor(size={"height": image_size, "width": image_size})
    if processor:
        SiglipProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(path)
    else:
        tok.save_pretrained(path)
        image_processor.save_pretrained(path)
    return path


def _gemma_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="▁", behavior="merged_with_next")
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"] + [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    import json

    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return dict(model["vocab"]), merges


def tiny_siglip2_naflex(path: Path) -> Path:
    import torch
    from transformers import Siglip2Config, Siglip2Model

    torch.manual_seed(0)
    vision = dict(VISION)
    vision.pop("image_size")
    config = Siglip2Config(text_config=dict(TEXT, vocab_size=300, max_position_embeddings=64, bos_token_id=None, eos_token_id=1), vision_config=dict(vision, num_patches=16))
    Siglip2Model(config).save_pretrained(path)
    return path


def tiny_chinese_clip(path: Path, *, seed: int = 0, image_size: int = 32) -> Path:
    """Chinese-CLIP: a CLIP vision tower with a BERT text tower and WordPiece tokenizer."""
    import torch
    from transformers import BertTokenizer, ChineseCLIPConfig, ChineseCLIPImageProcessor, ChineseCLIPModel

    path.mkdir(parents=True, exist_ok=True)
    words = sorted({w for line in CORPUS for w in line.lower().split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *"abcdefghijklmnopqrstuvwxyz"]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(vocab_file=str(path / "vocab.txt"))
    text = dict(TEXT, vocab_size=len(vocab), max_position_embeddings=64, pad_token_id=0)
    config = ChineseCLIPConfig(text_config=text, vision_config=dict(VISION, image_size=image_size), projection_dim=24)
    torch.manual_seed(seed)
    ChineseCLIPModel(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    size = {"height": image_size, "width": image_size}
    ChineseCLIPImageProcessor(size=size, crop_size=size).save_pretrained(path)
    return path


def tiny_metaclip2(path: Path, *, seed: int = 0, image_size: int = 32) -> Path:
    """MetaCLIP 2 (the multilingual CLIP architecture in transformers), with a small BPE."""
    import torch
    from transformers import CLIPImageProcessor, CLIPTokenizer, MetaClip2Config, MetaClip2Model

    vocab, merges = _byte_level_bpe()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    text = dict(TEXT, vocab_size=len(vocab), max_position_embeddings=77,
                bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"])
    config = MetaClip2Config(text_config=text, vision_config=dict(VISION, image_size=image_size), projection_dim=24)
    torch.manual_seed(seed)
    MetaClip2Model(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}).save_pretrained(path)
    return path
