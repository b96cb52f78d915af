"""Unlabeled text for continued pre-training: TextData, its causal-LM batch, user text files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from secagg.models import DataFormatError, TextData, load_text_file, text_batch, train_test_split
from secagg.models.errors import AssetNotFoundError


def test_text_data_splits_and_subsets_like_the_other_sets() -> None:
    data = TextData("d", tuple(f"document number {i}" for i in range(20)))
    assert len(data) == 20 and data.num_labels == 1 and not data.labels.any()
    train, test = train_test_split(data, test_fraction=0.2, seed=3)
    assert isinstance(test, TextData) and isinstance(train, TextData)
    assert len(test) == 4 and len(train) == 16
    assert not set(train.texts) & set(test.texts)
    assert data.subset([3, 1]).texts == ("document number 3", "document number 1")
    with pytest.raises(DataFormatError):
        TextData("d", ("fine", "  "))


class _WordTokenizer:
    """A whitespace tokenizer with the Hugging Face call signature used by text_batch."""

    pad_token_id = 0

    def __call__(self, texts: list[str], *, padding: bool, truncation: bool, max_length: int,
                 return_tensors: str) -> dict[str, torch.Tensor]:
        rows = [[len(w) + 1 for w in t.split()][:max_length] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def test_text_batch_learns_every_real_token_and_no_padding() -> None:
    batch = text_batch(_WordTokenizer(), ["a bb ccc dddd", "e"], max_length=3)
    assert batch["input_ids"].shape == (2, 3)
    assert batch["labels"][0].tolist() == [2, 3, 4]  # truncated to max_length, all targets
    assert batch["labels"][1].tolist() == [2, -100, -100]  # padding ignored


def test_user_text_files(tmp_path: Path) -> None:
    txt = tmp_path / "notes.txt"
    txt.write_text("first note\n\n  second note  \n")
    assert load_text_file(txt).texts == ("first note", "second note")
    jl = tmp_path / "notes.jsonl"
    jl.write_text("\n".join(json.dumps({"text": t, "label": "x"}) for t in ("a", "b")) + "\n")
    assert load_text_file(jl).texts == ("a", "b")
    csv = tmp_path / "notes.csv"
    csv.write_text('id,text\n1,"one, with a comma"\n2,two\n')
    assert load_text_file(csv).texts == ("one, with a comma", "two")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(DataFormatError, match=r"bad.jsonl:2: missing column 'text'"):
        load_text_file(bad)
    nums = tmp_path / "nums.jsonl"
    nums.write_text('{"text": 5}\n')
    with pytest.raises(DataFormatError, match="must be a string"):
        load_text_file(nums)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(DataFormatError, match="no documents"):
        load_text_file(empty)
    parquet = tmp_path / "x.parquet"
    parquet.write_text("text\n")
    with pytest.raises(DataFormatError, match="unknown text file type"):
        load_text_file(parquet)
    with pytest.raises(AssetNotFoundError):
        load_text_file(tmp_path / "missing.txt")
    assert np.array_equal(load_text_file(txt).labels, [0, 0])
