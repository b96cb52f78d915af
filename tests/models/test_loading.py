"""Offline loading: sources, validation, the GGUF cache, and (slow) the real SmolLM2."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

import secagg.models.assets as assets
from secagg.models import (
    AdapterConfig,
    AssetNotFoundError,
    InstructionData,
    TaskKind,
    TrainConfig,
    UnsupportedModelError,
    build_model,
    evaluate,
    load_model,
    load_packaged,
    minilm_folder,
    resolve_source,
    smollm2_gguf,
    train_local,
)


def test_minilm_resolves_to_the_packaged_folder() -> None:
    folder = resolve_source("minilm")
    assert folder == minilm_folder() and (folder / "model.safetensors").is_file()
    assert resolve_source(str(folder)) == folder


def test_bad_sources(tmp_path: Path) -> None:
    with pytest.raises(AssetNotFoundError, match="neither an alias"):
        resolve_source("gpt-9")
    with pytest.raises(AssetNotFoundError, match=r"config\.json"):
        resolve_source(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(UnsupportedModelError, match=r"\.gguf"):
        resolve_source(tmp_path / "weights.bin")
    with pytest.raises(TypeError):
        resolve_source(3)  # type: ignore[arg-type]


def test_load_model_validates_task_arguments() -> None:
    with pytest.raises(UnsupportedModelError, match="num_labels"):
        load_model("minilm", task=TaskKind.CLASSIFICATION)
    with pytest.raises(UnsupportedModelError, match="num_labels"):
        load_model("minilm", task=TaskKind.CAUSAL_LM, num_labels=2)
    with pytest.raises(UnsupportedModelError, match="encoder-only"):
        load_model("minilm", task=TaskKind.CAUSAL_LM)
    loaded = load_model("minilm", task=TaskKind.CLASSIFICATION, num_labels=3)
    assert loaded.model_type == "bert" and loaded.model.config.num_labels == 3
    assert loaded.tokenizer.pad_token is not None


def test_gguf_cache_is_atomic_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []

    def fake_convert(gguf: Path, out: Path) -> None:
        calls.append(out)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(assets, "_convert", fake_convert)
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF fake")
    cache = tmp_path / "cache"
    folder = assets.gguf_to_folder(gguf, cache=cache)
    assert folder.parent == cache / "gguf" and folder.name.startswith("tiny-")
    assert assets.gguf_to_folder(gguf, cache=cache) == folder and len(calls) == 1
    leftovers = sorted(p.name for p in (cache / "gguf").iterdir())
    assert leftovers == [folder.name, f"{folder.name}.lock"]  # no temporary folders
    gguf.write_bytes(b"GGUF other contents")  # a new file gets a new folder
    assert assets.gguf_to_folder(gguf, cache=cache) != folder and len(calls) == 2
    # A folder without its marker (a crashed writer) is rebuilt, not trusted.
    (folder / "secagg-source.json").unlink()
    gguf.write_bytes(b"GGUF fake")
    assert assets.gguf_to_folder(gguf, cache=cache) == folder and len(calls) == 3


def test_cache_dir_honours_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECAGG_CACHE_DIR", str(tmp_path / "c"))
    assert assets.cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()
    monkeypatch.delenv("SECAGG_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert assets.cache_dir() == tmp_path / "x" / "secagg"


@pytest.mark.slow
def test_smollm2_from_gguf_lora_learns_chat_pairs() -> None:
    t0 = time.perf_counter()
    folder = resolve_source("smollm2")  # converted once, then cached under the user cache
    convert_s = time.perf_counter() - t0
    assert resolve_source(smollm2_gguf()) == folder
    m = build_model("smollm2", task=TaskKind.CAUSAL_LM, adapter=AdapterConfig.lora(), init_seed=0)
    assert m.num_trainable == 921_600  # r=8 on q, k, v, o in 30 layers
    assert m.spec.meta_dict()["model_type"] == "llama"

    tok = m.tokenizer
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = m.model.generate(**prompt, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer

    chat = load_packaged("chatterbot")
    assert isinstance(chat, InstructionData)
    client = chat.subset(np.random.default_rng(0).choice(len(chat), 16, replace=False))
    before = evaluate(m, client, max_length=48, batch_size=16)
    result = train_local(
        m, client, TrainConfig(steps=3, batch_size=8, learning_rate=2e-3, max_length=48), seed=0
    )
    after = evaluate(m, client, max_length=48, batch_size=16)
    print(
        f"\nSmolLM2: resolve {convert_s:.1f} s, LoRA {m.num_trainable} values, "
        f"{result.seconds / 3:.2f} s/step (batch 8, <=48 tokens), loss {before.loss:.3f} -> "
        f"{after.loss:.3f}, perplexity {before.perplexity:.1f} -> {after.perplexity:.1f}"
    )
    assert after.loss < before.loss
    assert result.update_norm > 0

    cls = build_model(
        "smollm2",
        task=TaskKind.CLASSIFICATION,
        num_labels=2,
        adapter=AdapterConfig.lora(),
        init_seed=0,
    )
    assert cls.num_trainable == 921_600 + 2 * 576  # plus the fresh score head
    spam = load_packaged("sms-spam").subset(np.arange(8))
    assert np.isfinite(evaluate(cls, spam, max_length=32).loss)
