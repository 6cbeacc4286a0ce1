"""A run's vocabulary: token id → the text it stands for, so that token windows read as text.

Read from the files users have, by what they hold rather than by their name:

    JSON list               ["a", "b", …]: the token of id k at index k (the sample's vocab.json)
    JSON object             {"a": 0, "b": 1, …}: token → id, as many tokenizers' vocab files
    Hugging Face tokenizer  tokenizer.json: its model's vocab (BPE/WordPiece object, Unigram
                            [token, score] list) and its added tokens; read as JSON, no library
    SentencePiece model     *.model: needs the optional `sentencepiece` package (one-line error
                            saying so when it is missing)

Tokens come back as the text they print: byte-level BPE's "Ġ" and "Ċ" (GPT-2's byte alphabet) and
SentencePiece's "▁" become the space and newline they stand for. Ids a file skips read "<id 7>".
Nothing here imports onnx, torch or numpy: runs and pages decode without them.
"""

from __future__ import annotations

import json
from pathlib import Path

from reporter.errors import VocabError

__all__ = ["load_vocab", "shown", "token_text"]

_METASPACE = "\u2581"  # SentencePiece's "▁": a space before the word


def load_vocab(path: Path | str) -> list[str]:
    """The vocabulary in `path` as a list: entry k is the text of token id k."""
    path = Path(path)
    if path.suffix == ".model":
        return _sentencepiece(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VocabError(f"{path}: no such vocabulary file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VocabError(f"{path}: not a readable JSON vocabulary ({type(exc).__name__}: {exc})") from None
    if isinstance(data, list):
        if not all(isinstance(token, str) for token in data):
            raise VocabError(f"{path}: a JSON list vocabulary holds one string per id")
        return list(data)
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        return _tokenizer_json(path, data)
    if isinstance(data, dict):
        return _by_id(path, data.items(), byte_level=False)
    raise VocabError(f"{path}: expected a JSON list (id → token) or object (token → id), got {type(data).__name__}")


def _tokenizer_json(path: Path, data: dict) -> list[str]:
    """A Hugging Face tokenizer.json: model vocab plus added tokens, with its byte-level alphabet undone."""
    model, byte_level = data["model"], _uses_byte_level(data)
    vocab = model.get("vocab")
    if isinstance(vocab, dict):
        pairs = list(vocab.items())
    elif isinstance(vocab, list):  # Unigram: [[token, score], …], the id is the position
        pairs = [(entry[0], k) for k, entry in enumerate(vocab) if isinstance(entry, list) and entry]
    else:
        raise VocabError(f"{path}: tokenizer.json model {model.get('type')!r} has no vocab this reader knows")
    pairs += [(token["content"], token["id"]) for token in data.get("added_tokens") or [] if "content" in token]
    return _by_id(path, pairs, byte_level)


def _uses_byte_level(data: dict) -> bool:
    """Whether a tokenizer.json maps bytes to GPT-2's printable alphabet (its pre-tokenizer or decoder)."""
    parts = [data.get("pre_tokenizer"), data.get("decoder")]
    found = []
    while parts:
        part = parts.pop()
        if isinstance(part, dict):
            found.append(part.get("type"))
            parts.extend(part.get("pretokenizers") or part.get("decoders") or [])
    return "ByteLevel" in found


def _by_id(path: Path, pairs, byte_level: bool) -> list[str]:
    """Token → id pairs as a list by id; ids must be non-negative integers, each used once."""
    by_id: dict[int, str] = {}
    for token, k in pairs:
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise VocabError(f"{path}: token {str(token)[:40]!r} has id {k!r}, not a non-negative integer")
        if by_id.setdefault(k, token) != token:
            raise VocabError(f"{path}: id {k} names two tokens, {by_id[k][:40]!r} and {str(token)[:40]!r}")
    if not by_id:
        raise VocabError(f"{path}: the vocabulary is empty")
    size = max(by_id) + 1
    return [_printed(by_id[k], byte_level) if k in by_id else f"<id {k}>" for k in range(size)]


def _printed(token: str, byte_level: bool) -> str:
    """The text a token prints: byte-level symbols back to their bytes (as UTF-8 where whole), ▁ to a space."""
    if byte_level:
        table = _byte_decoder()
        if all(char in table for char in token):
            return bytes(table[char] for char in token).decode("utf-8", errors="replace")
    return token.replace(_METASPACE, " ")


def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in for each byte (bytes_to_unicode), reversed: symbol → byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[chr(byte)] = byte
        else:
            symbols[chr(256 + extra)] = byte
            extra += 1
    return symbols


def _sentencepiece(path: Path) -> list[str]:
    try:
        import sentencepiece
    except ImportError:
        raise VocabError(f"{path}: a SentencePiece model; install sentencepiece to read it") from None
    try:
        processor = sentencepiece.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as exc:
        raise VocabError(f"{path}: not a readable SentencePiece model ({exc})") from None
    return [processor.id_to_piece(k).replace(_METASPACE, " ") for k in range(processor.get_piece_size())]


def token_text(ids, vocab: list[str]) -> list[str]:
    """Each id's text; an id outside the vocabulary reads "<id k>" rather than failing a page."""
    return [vocab[k] if 0 <= k < len(vocab) else f"<id {k}>" for k in (int(i) for i in ids)]


def shown(text: str) -> str:
    """Text with its whitespace made visible, as a table or a description quotes a token."""
    return text.replace("\n", "↵").replace("\t", "⇥").replace(" ", "␣") or "∅"
