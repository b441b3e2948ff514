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
import re
from collections import Counter
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


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-to-symbol table, the one CLIP's tokenizer maps UTF-8 bytes through."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _byte_level_bpe(max_merges: int = 400) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A small byte-level BPE vocabulary in CLIP's format (``</w>`` word ends), learned from CORPUS.

    Learned here, not by ``tokenizers``' BpeTrainer: that trainer numbers its alphabet and
    breaks tied merge counts in hash-map order, which changes from process to process, so
    the same seed gave a different tokenizer (and a base model whose retrieval moved by
    several captions) in every test run. Here ties go to the lexicographically first pair
    and ids follow sorted symbols, so every process builds the same files.
    """
    table = _bytes_to_unicode()
    words: Counter[tuple[str, ...]] = Counter()
    for text in CORPUS:
        for word in re.findall(r"\w+|[^\w\s]+", text.lower()):
            symbols = [table[b] for b in word.encode("utf-8")]
            symbols[-1] += "</w>"
            words[tuple(symbols)] += 1
    alphabet = sorted(table.values())
    vocab = {tok: i for i, tok in enumerate(["<|startoftext|>", "<|endoftext|>", *alphabet, *(a + "</w>" for a in alphabet)])}
    return vocab, _learn_merges(words, vocab, len(vocab) + max_merges)


def _learn_merges(words: Counter[tuple[str, ...]], vocab: dict[str, int], vocab_size: int) -> list[tuple[str, str]]:
    """Plain BPE: merge the most frequent adjacent pair (ties: the lexicographically first)
    until ``vocab`` holds ``vocab_size`` tokens or every word is one token; new tokens are
    appended to ``vocab``."""
    merges: list[tuple[str, str]] = []
    while len(vocab) < vocab_size:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, count in words.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        vocab.setdefault(best[0] + best[1], len(vocab))
        merged: Counter[tuple[str, ...]] = Counter()
        for symbols, count in words.items():
            out: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    return merges


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
    """Gemma's layout: lower-cased text, ``▁`` for spaces, the 256 byte-fallback tokens
    among the specials; learned deterministically like :func:`_byte_level_bpe`."""
    words: Counter[tuple[str, ...]] = Counter()
    for text in CORPUS:
        for i, piece in enumerate(text.lower().split(" ")):
            words[tuple(("▁" if i else "") + piece)] += 1
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"] + [f"<0x{b:02X}>" for b in range(256)]
    alphabet = sorted({c for word in words for c in word})
    vocab = {tok: i for i, tok in enumerate([*specials, *alphabet])}
    return vocab, _learn_merges(words, vocab, 400)


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
