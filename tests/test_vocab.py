"""Vocabularies as users have them, read as id → the text each token prints."""

from __future__ import annotations

import builtins
import json

import pytest
from markupsafe import escape

from reporter.errors import VocabError
from reporter.vocab import load_vocab, token_text


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_a_json_list_is_id_to_token_as_the_sample_vocab_is(tmp_path):
    assert load_vocab(_write(tmp_path, "vocab.json", [" ", "a", "\n", '"'])) == [" ", "a", "\n", '"']


def test_a_json_object_is_token_to_id_and_a_skipped_id_reads_as_itself(tmp_path):
    path = _write(tmp_path, "vocab.json", {"the": 0, "cat": 1, "sat": 3})
    assert load_vocab(path) == ["the", "cat", "<id 2>", "sat"]


def test_a_byte_level_bpe_tokenizer_json_prints_spaces_newlines_and_utf8(tmp_path):
    """GPT-2's alphabet: "Ġ" is a space, "Ċ" a newline, "Ã©" the two bytes of "é"."""
    data = {
        "model": {"type": "BPE", "vocab": {"hello": 0, "Ġworld": 1, "Ċ": 2, "cafÃ©": 3}, "merges": []},
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False},
        "added_tokens": [{"id": 4, "content": "<|endoftext|>", "special": True}],
    }
    assert load_vocab(_write(tmp_path, "tokenizer.json", data)) == ["hello", " world", "\n", "café", "<|endoftext|>"]


def test_a_unigram_tokenizer_json_reads_its_scored_list_and_metaspace(tmp_path):
    data = {
        "model": {"type": "Unigram", "vocab": [["<unk>", 0.0], ["\u2581the", -1.5], ["s", -2.0]]},
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581"},
    }
    assert load_vocab(_write(tmp_path, "tokenizer.json", data)) == ["<unk>", " the", "s"]


def test_a_byte_level_decoder_inside_a_sequence_counts_too(tmp_path):
    data = {
        "model": {"type": "BPE", "vocab": {"Ġa": 0}},
        "decoder": {"type": "Sequence", "decoders": [{"type": "ByteLevel"}]},
    }
    assert load_vocab(_write(tmp_path, "tokenizer.json", data)) == [" a"]


@pytest.mark.parametrize(
    "content, message",
    [
        ("{", "not a readable JSON vocabulary"),
        ("[1, 2]", "a JSON list vocabulary holds one string per id"),
        ('{"a": -1}', "token 'a' has id -1, not a non-negative integer"),
        ('{"a": 0, "b": 0}', "id 0 names two tokens, 'a' and 'b'"),
        ("{}", "the vocabulary is empty"),
        ('"tokens"', "expected a JSON list (id → token) or object (token → id), got str"),
        ('{"model": {"type": "WordLevel"}}', "tokenizer.json model 'WordLevel' has no vocab this reader knows"),
    ],
)
def test_a_file_that_is_no_vocabulary_is_one_line_naming_it(tmp_path, content, message):
    path = tmp_path / "vocab.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(VocabError) as caught:
        load_vocab(path)
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_missing_file_says_so(tmp_path):
    with pytest.raises(VocabError, match="no such vocabulary file"):
        load_vocab(tmp_path / "nowhere.json")


def test_a_sentencepiece_model_without_the_library_says_what_to_install(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_sentencepiece(name, *args, **kwargs):
        if name == "sentencepiece":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sentencepiece)
    path = tmp_path / "spm.model"
    path.write_bytes(b"\x00")
    with pytest.raises(VocabError, match="install sentencepiece to read it"):
        load_vocab(path)


def test_ids_outside_the_vocabulary_read_as_themselves_rather_than_failing_a_page():
    assert token_text([0, 2, 5, -1], ["a", "b", "c"]) == ["a", "c", "<id 5>", "<id -1>"]


def test_the_sample_character_models_vocabulary_reads_as_its_characters():
    from tests.conftest import ROOT

    vocab = load_vocab(ROOT / "sample_models" / "charlm" / "vocab.json")
    assert vocab[:3] == [" ", "!", '"'] and "\n" in vocab


def test_a_run_keeps_its_vocabulary_byte_identically_and_refuses_a_damaged_one(tmp_path):
    from reporter.errors import RunError
    from reporter.runstore import Run
    from tests.test_runstore import _files, _run

    run = _run()
    run.vocab = [" ", "a", "\n", "<id 3>"]
    run.save(tmp_path / "a")
    loaded = Run.load(tmp_path / "a")
    assert loaded.vocab == run.vocab
    loaded.save(tmp_path / "b")
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert Run.load(tmp_path / "a").vocab is not None and _run().vocab is None
    (tmp_path / "a" / "vocab.json").write_text('{"a": 0}', encoding="utf-8")
    with pytest.raises(RunError, match="vocab.json: a run's vocabulary is a JSON list of strings"):
        Run.load(tmp_path / "a")


def test_replay_with_a_vocabulary_shows_the_character_models_windows_as_text(tmp_path):
    """The sample character model, replayed with its vocab.json: the window pages show the text."""
    from reporter.cli import main
    from reporter.runstore import Run
    from tests.conftest import ROOT

    charlm = ROOT / "sample_models" / "charlm"
    args = ["replay", str(charlm / "v1.pt"), "--factory", "sample_models.charlm.model:build", "--windows"]
    args += [str(charlm / "windows.npz"), "--kwargs", '{"vocab": 98, "embedding": 32, "hidden": 128, "layers": 2}']
    assert main([*args, "--vocab", str(charlm / "vocab.json"), "-o", str(tmp_path / "run"), "--provider", "cpu"]) == 0
    run = Run.load(tmp_path / "run")
    assert run.vocab == load_vocab(charlm / "vocab.json") and run.meta["vocab"]["tokens"] == len(run.vocab)
    assert main(["build", "--runs", str(tmp_path / "run"), "-o", str(tmp_path / "site")]) == 0
    window = int(run.traces["window"][0])
    page = next((tmp_path / "site").rglob(f"w{window}.html")).read_text(encoding="utf-8")
    tokens = token_text(run.traces["x"][0], run.vocab)
    assert "".join(f"<span>{escape(token)}</span>" for token in tokens) in page  # escaped as Jinja escapes
    assert len("".join(tokens)) == run.traces["x"].shape[1]  # one character per token


def test_replay_with_a_broken_vocabulary_is_exit_2_and_one_line_before_any_replay(tmp_path, capsys):
    from reporter.cli import main
    from tests.conftest import ROOT

    (tmp_path / "vocab.json").write_text("[1, 2]", encoding="utf-8")
    charlm = ROOT / "sample_models" / "charlm"
    args = ["replay", str(charlm / "v1.pt"), "--factory", "sample_models.charlm.model:build"]
    args += [
        "--windows",
        str(charlm / "windows.npz"),
        "--vocab",
        str(tmp_path / "vocab.json"),
        "-o",
        str(tmp_path / "r"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(f"{tmp_path / 'vocab.json'}: a JSON list vocabulary holds one string per id")
    assert not (tmp_path / "r").exists()


def test_the_sample_sites_character_model_carries_its_vocabulary_from_the_config(sample_runs):
    from tests.conftest import ROOT

    run = sample_runs[("charlm", "v1")]
    assert run.vocab == load_vocab(ROOT / "sample_models" / "charlm" / "vocab.json")
    assert run.meta["vocab"]["file"] == "vocab.json"
    assert sample_runs[("forecaster", "v1")].vocab is None


def test_a_config_names_a_vocabulary_relative_to_itself_and_a_bad_one_fails_before_replay(tmp_path):
    from reporter.config import load_config
    from reporter.pipeline.run_cache import cached_run

    (tmp_path / "vocab.json").write_text("{}", encoding="utf-8")
    (tmp_path / "reporter.toml").write_text(
        '[[runs]]\nmodel = "m"\nversion = "v1"\ncheckpoint = "m.pt"\nwindows = "w.npy"\nvocab = "vocab.json"\n',
        encoding="utf-8",
    )
    (run,) = load_config(tmp_path / "reporter.toml").runs
    assert run.vocab == tmp_path / "vocab.json"
    with pytest.raises(VocabError, match="vocab.json: the vocabulary is empty"):
        cached_run(run, tmp_path / "runs")  # m.pt does not exist: the vocabulary is read first
