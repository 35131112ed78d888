"""The bad-input corpus: every wrong input a user can give gets one clear error and leaves nothing behind.

Each case prepares a wrong input inside its own folder and runs the ``cme-vlm`` command a user
would run. The command must exit 2 with exactly one ``error:`` line (so the error is one of
``cme_vlm.errors``: anything else escapes ``main`` as a traceback), the message must name the
input and say what to do, and the case's folder must be byte-for-byte as it was before, except
for ``data build``'s list of problems (``out/invalid.csv``): the one file a failed build writes.

The accepted cases are well-formed inputs in less common forms (0/1 masks, 16-bit masks, a CSV
with a byte-order mark): each must build exactly the records its usual form builds.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cme_vlm import cli
from cme_vlm.cli import main
from cme_vlm.data.records import load_dataset, raw_images, save_dataset

from .conftest import snapshot

MANIFEST_BUILD = ["data.source=manifest", "data.image_size=32"]
PROBLEM_LIST = ("out", "out/invalid.csv")  # what a data build that found problems leaves: the list, nothing else


@dataclass
class Inputs:
    """What the cases start from: the shared fixtures, and this case's own folder ``tmp``."""

    tmp: Path
    built: Path  # 01-data stage folder (instruction records, no answers)
    answered: Path  # stage folder of an answered dataset (train, val and test records)
    model: Path  # an exported tiny model
    trees: type
    pref_rows: Callable[..., Path]

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def manifest_tree(self) -> Path:
        self.trees.manifest(self.tmp / "src")
        return self.tmp / "src"

    def manifest_rows(self) -> list[dict]:
        return [json.loads(line) for line in (self.tmp / "src" / "manifest.jsonl").read_text().splitlines()]

    def write_manifest(self, rows: list[dict]) -> None:
        (self.tmp / "src" / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def build(self, *overrides: str) -> list[str]:
        return ["data", "build", "--frames", str(self.tmp / "src"), "--out", str(self.out), *MANIFEST_BUILD, *overrides]


CASES: dict[str, tuple[Callable[[Inputs], list[str]], str, str, tuple[str, ...]]] = {}
ACCEPTED: dict[str, Callable[[Inputs], list[str]]] = {}


def case(name: str, names: str, fix: str, leaves: tuple[str, ...] = ()):
    """Register a case: its setup returns the CLI arguments; ``names`` and ``fix`` are regexes the message must hold;
    ``leaves`` are the only paths the failed command may add to the case's folder."""

    def register(setup: Callable[[Inputs], list[str]]) -> Callable[[Inputs], list[str]]:
        CASES[name] = (setup, names, fix, leaves)
        return setup

    return register


def accepted(name: str):
    """Register an accepted case: its setup rewrites the manifest tree in another well-formed form."""

    def register(setup: Callable[[Inputs], list[str]]) -> Callable[[Inputs], list[str]]:
        ACCEPTED[name] = setup
        return setup

    return register


def synth(i: Inputs, *extra: str) -> list[str]:
    return ["data", "synth", "--out", str(i.out), *extra]


# ------------------------------------------------------------------ configs
@case("config-unknown-key", r"data\.synthetic\.n_framez", r"did you mean 'data\.synthetic\.n_frames'")
def _(i): return synth(i, "data.synthetic.n_framez=3")


@case("config-unknown-key-in-file", r"exp\.yaml.*'sft\.lrr'", r"did you mean 'sft\.lr'")
def _(i):
    (i.tmp / "exp.yaml").write_text("base: demo\nsft: {lrr: 0.1}\n")
    return synth(i, "--config", str(i.tmp / "exp.yaml"))


@case("config-wrong-type", r"sft\.lr", r"Fix the value")
def _(i): return synth(i, "sft.lr=fast")


@case("config-missing-file", r"nowhere\.yaml", r"Check the path")
def _(i): return synth(i, "--config", str(i.tmp / "nowhere.yaml"))


@case("config-yaml-syntax", r"exp\.yaml", r"Fix the syntax")
def _(i):
    (i.tmp / "exp.yaml").write_text("name: [unclosed\n")
    return synth(i, "--config", str(i.tmp / "exp.yaml"))


@case("config-everything-frozen", r"sft\.freezing", r"set one to train or lora")
def _(i): return synth(i, *(f"sft.freezing.{c}=freeze" for c in ("vision_encoder", "merger", "language_model")))


@case("config-bad-enum", r"teacher\.backend", r"Fix the value")
def _(i): return synth(i, "teacher.backend=openai")


@case("config-bad-group", r"model config 'qwen9'", r"Choices: .*tiny")
def _(i): return synth(i, "model=qwen9")


@case("config-alpha-out-of-range", r"data\.overlay\.alpha=1\.5", r"must lie in \[0, 1\]")
def _(i): return synth(i, "data.overlay.alpha=1.5")


@case("config-k-above-settings", r"preference\.k=9", r"one setting per candidate")
def _(i): return synth(i, "preference.k=9")


@case("config-override-without-value", r"--sft\.lr", r"key=value")
def _(i): return synth(i, "--sft.lr")


# ------------------------------------------------------------------ frames, masks, manifests
@case("data-truncated-png", r"p0/f0\.png", r"truncated.*Re-export", PROBLEM_LIST)
def _(i):
    frame = i.manifest_tree() / "img" / "p0" / "f0.png"
    frame.write_bytes(frame.read_bytes()[:60])
    return i.build()


def _mask(i: Inputs, array: np.ndarray, mode: str | None) -> list[str]:
    Image.fromarray(array, mode=mode).save(i.manifest_tree() / "msk" / "p1" / "f1_pancreas.png")
    return i.build()


@case("data-mask-16-bit-grey-levels", r"f1_pancreas\.png.*not binary.*320 value", r"single-channel 8-bit PNG",
      PROBLEM_LIST)
def _(i): return _mask(i, np.arange(320, dtype=np.uint16).reshape(16, 20), None)


@case("data-mask-rgba", r"f1_pancreas\.png.*RGBA", r"single-channel 8-bit PNG", PROBLEM_LIST)
def _(i): return _mask(i, np.full((16, 20, 4), 255, np.uint8), "RGBA")


@case("data-mask-grey-levels", r"f1_pancreas\.png.*not binary", r"0 for background and 255", PROBLEM_LIST)
def _(i): return _mask(i, np.full((16, 20), 128, np.uint8), "L")


@case("data-mask-size-mismatch", r"f1_pancreas\.png.*10x8.*20x16", r"Resize the mask", PROBLEM_LIST)
def _(i): return _mask(i, np.full((8, 10), 255, np.uint8), "L")


@case("data-mask-empty", r"f1_pancreas\.png.*empty", r"Remove it from the manifest or redraw", PROBLEM_LIST)
def _(i): return _mask(i, np.zeros((16, 20), np.uint8), "L")


@case("data-duplicate-record", r"line 7.*img/p0/f0\.png.*'pancreas'", r"Remove one", PROBLEM_LIST)
def _(i):
    i.manifest_tree()
    rows = i.manifest_rows()
    i.write_manifest(rows + [rows[0]])
    return i.build()


@case("data-unknown-structure", r"line 1.*'spleen'", r"add the structure .* registry", PROBLEM_LIST)
def _(i):
    i.manifest_tree()
    rows = i.manifest_rows()
    rows[0]["masks"] = {"spleen": rows[0]["masks"]["pancreas"]}
    i.write_manifest(rows)
    return i.build()


@case("data-manifest-missing-column", r"manifest\.csv.*side", r"Required: frame, masks")
def _(i):
    i.manifest_tree()
    rows = ["frame,masks,procedure,phase"] + [
        f"{r['frame']},\"{json.dumps(r['masks']).replace(chr(34), chr(34) * 2)}\",{r['procedure']},{r['phase']}"
        for r in i.manifest_rows()
    ]
    (i.tmp / "src" / "manifest.csv").write_text("\n".join(rows) + "\n")
    return i.build(f"data.manifest={i.tmp / 'src' / 'manifest.csv'}")


@case("data-missing-frame", r"p2/f1\.png.*does not exist", r"Fix the path in the manifest or restore", PROBLEM_LIST)
def _(i):
    (i.manifest_tree() / "img" / "p2" / "f1.png").unlink()
    return i.build()


@case("data-manifest-bad-json", r"manifest\.jsonl' line 3", r"Fix that line", PROBLEM_LIST)
def _(i):
    i.manifest_tree()
    lines = (i.tmp / "src" / "manifest.jsonl").read_text().splitlines()
    lines[2] = lines[2][:-5]
    (i.tmp / "src" / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return i.build()


@case("data-bad-side", r"line 2.*side 'middle'", r"must be 'left' or 'right'", PROBLEM_LIST)
def _(i):
    i.manifest_tree()
    rows = i.manifest_rows()
    rows[1]["side"] = "middle"
    i.write_manifest(rows)
    return i.build()


@case("data-no-manifest", r"src", r"set data\.manifest")
def _(i):
    (i.tmp / "src").mkdir()
    return i.build()


@case("data-dsad-mask-without-frame", r"pancreas/03/mask01\.png", r"Restore the frame or remove the mask", PROBLEM_LIST)
def _(i):
    i.trees.dsad(i.tmp / "src")
    (i.tmp / "src" / "pancreas" / "03" / "image01.png").unlink()
    return ["data", "build", "--frames", str(i.tmp / "src"), "--out", str(i.out), "data.source=dsad", "data.image_size=32"]


@case("data-several-bad-files", r"3 problem\(s\).*out/invalid\.csv'; the first: .*p0/f1\.png", r"data\.on_invalid=skip",
      PROBLEM_LIST)
def _(i):
    root = i.manifest_tree()
    (root / "img" / "p0" / "f1.png").write_bytes(b"not a png")
    Image.fromarray(np.full((16, 20), 128, np.uint8)).save(root / "msk" / "p1" / "f1_pancreas.png")
    (root / "img" / "p2" / "f0.png").unlink()
    return i.build()


# ------------------------------------------------------------------ accepted: well-formed, less common forms
def _remask(i: Inputs, form: Callable[[np.ndarray], Image.Image]) -> list[str]:
    """Save one 0/255 mask again, the same pixels in another form."""
    path = i.manifest_tree() / "msk" / "p1" / "f1_pancreas.png"
    form(np.asarray(Image.open(path)) == 255).save(path)
    return i.build()


@accepted("data-mask-0-1")
def _(i): return _remask(i, lambda mask: Image.fromarray(mask.astype(np.uint8)))


@accepted("data-mask-mode-1")
def _(i): return _remask(i, lambda mask: Image.fromarray(mask))  # a bool array gives mode "1"


@accepted("data-mask-16-bit-0-65535")
def _(i): return _remask(i, lambda mask: Image.fromarray(mask.astype(np.uint16) * 65535))


@accepted("data-manifest-csv-with-bom")
def _(i):
    i.manifest_tree()
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\r\n")  # as a spreadsheet's "CSV UTF-8" export: BOM and CRLF
    writer.writerow(["frame", "masks", "procedure", "side", "phase"])
    writer.writerows([r["frame"], json.dumps(r["masks"]), r["procedure"], r["side"], r["phase"]] for r in i.manifest_rows())
    (i.tmp / "src" / "manifest.csv").write_bytes(text.getvalue().encode("utf-8-sig"))
    return i.build(f"data.manifest={i.tmp / 'src' / 'manifest.csv'}")


# ------------------------------------------------------------------ datasets
def dpo(i: Inputs, dataset: Path, model: Path | None = None) -> list[str]:
    return ["train", "dpo", "--dataset", str(dataset), "--model", str(model or i.model), "--out", str(i.out),
            "wandb.mode=disabled"]


@case("dataset-pair-accepted-equals-rejected", r"pair '\w+' has identical", r"Remove it or re-run")
def _(i): return dpo(i, i.pref_rows(i.tmp, same=True))


@case("dataset-missing-reference-logprobs", r"pair '\w+' has no reference log-probs", r"dpo\.reference=in_memory")
def _(i): return dpo(i, i.pref_rows(i.tmp, reference=math.nan))


@case("dataset-instruction-records-given-to-dpo", r"answered.*not a preference dataset", r"Point to the dataset")
def _(i): return dpo(i, i.answered)


@case("dataset-folder-not-a-dataset", r"'.*empty' is not a saved dataset", r"run that stage first")
def _(i):
    (i.tmp / "empty").mkdir()
    return ["teacher", "answer", "--dataset", str(i.tmp / "empty"), "--out", str(i.out)]


@case("dataset-damaged-arrow", r"answered dataset '.*copy/dataset' cannot be read", r"Re-run the stage")
def _(i):
    shutil.copytree(i.answered, i.tmp / "copy")
    arrow = next((i.tmp / "copy" / "dataset").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:200])
    return ["preference", "build", "--dataset", str(i.tmp / "copy"), "--model", str(i.model), "--out", str(i.out)]


@case("dataset-without-answers-for-pairs", r"answered dataset '.*01-data'.*no answered", r"cme-vlm teacher answer")
def _(i): return ["preference", "build", "--dataset", str(i.built), "--model", str(i.model), "--out", str(i.out)]


@case("dataset-damaged-journal", r"journal '.*journal\.jsonl' is damaged", r"Move it aside")
def _(i):
    i.out.mkdir()
    (i.out / "journal.jsonl").write_text('{"key": "a"}\n{"key": oops}\n{"key": "b"}\n')  # a complete line, not JSON
    return ["teacher", "answer", "--dataset", str(i.built), "--out", str(i.out)]


# ------------------------------------------------------------------ review sheets
def review(i: Inputs, rows: list[str]) -> list[str]:
    shutil.copytree(i.answered, i.tmp / "answered")
    rid = json.loads((i.tmp / "answered" / "ids.json").read_text())[0]
    header = "id,structure,side,phase,prompt,answer,decision,edited_answer,comment"
    (i.tmp / "review.csv").write_text("\n".join([header, *(r.format(id=rid) for r in rows)]) + "\n")
    return ["review", "import", "--sheet", str(i.tmp / "review.csv"), "--dataset", str(i.tmp / "answered" / "dataset")]


@case("review-unknown-decision", r"review\.csv.*row 2: decision 'maybe'", r"one of approve, edit, reject")
def _(i): return review(i, ["{id},,,,,,maybe,,"])


@case("review-edit-without-text", r"review\.csv.*row 2: decision 'edit'", r"corrected text in edited_answer")
def _(i): return review(i, ["{id},,,,,,edit,,"])


@case("review-id-twice", r"review\.csv.*row 3: id '\w+' appears twice", r"one row per record")
def _(i): return review(i, ["{id},,,,,,approve,,", "{id},,,,,,reject,,"])


# ------------------------------------------------------------------ models and checkpoints
def pairs_with(i: Inputs, model: Path, *overrides: str) -> list[str]:
    return ["preference", "build", "--dataset", str(i.answered), "--model", str(model), "--out", str(i.out), *overrides]


@case("model-wrong-family", r"--model: '.*model' holds a 'qwen2_5_vl' model", r"set model\.family=qwen2_5_vl")
def _(i): return pairs_with(i, i.model, "model.family=qwen2_vl")


@case("model-truncated-weights", r"weights in '.*copy' cannot be read", r"copy the folder again")
def _(i):
    shutil.copytree(i.model, i.tmp / "copy")
    weights = next((i.tmp / "copy").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return pairs_with(i, i.tmp / "copy")


@case("model-missing-folder", r"model folder '.*nowhere' does not exist", r"Point --model at a local folder")
def _(i): return dpo(i, i.pref_rows(i.tmp), i.tmp / "nowhere")


@case("model-folder-without-config", r"'.*weights' has no config\.json", r"export|Point|copy|download")
def _(i):
    (i.tmp / "weights").mkdir()
    (i.tmp / "weights" / "model.safetensors").write_bytes(b"\0" * 64)
    return pairs_with(i, i.tmp / "weights")


@case("checkpoint-truncated-last-ckpt", r"last\.ckpt", r"delete|remove|move")
def _(i):
    (i.out / "checkpoints").mkdir(parents=True)
    (i.out / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 truncated checkpoint")
    return ["train", "sft", "--dataset", str(i.answered), "--out", str(i.out), "wandb.mode=disabled", "sft.max_steps=1"]


@case("explain-missing-frame", r"--frame '.*frame\.png'", r"Give a PNG or JPEG")
def _(i):
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(i.tmp / "mask.png")
    return ["explain", "--model", str(i.model), "--frame", str(i.tmp / "frame.png"), "--mask", str(i.tmp / "mask.png")]


@pytest.fixture(scope="module")
def inputs_factory(built_dataset, answered_records, tiny_loaded, tmp_path_factory, data_trees):
    from cme_vlm.data.preference_records import preference_dataset, preference_row
    from cme_vlm.models.export import export_model

    shared = tmp_path_factory.mktemp("bad-inputs-shared")
    answered_ds = answered_records(n_test=1, n_val=1)
    save_dataset(answered_ds, shared / "answered")
    (shared / "answered" / "ids.json").write_text(json.dumps(list(answered_ds["id"])))
    model = export_model(tiny_loaded.model, tiny_loaded.processor, shared / "model")
    train_rows = [r for r in answered_ds if r["split"] == "train"]

    def pref_rows(tmp: Path, same: bool = False, reference: float = -3.0) -> Path:
        rows = [preference_row(r, r["answer"], r["answer"] if same else "The mesentery.",
                               ref_logp_accepted=reference, ref_logp_rejected=-4.0) for r in train_rows]
        save_dataset(preference_dataset(rows), tmp / "pairs")
        return tmp / "pairs" / "dataset"

    return lambda tmp: Inputs(tmp, built_dataset, shared / "answered", Path(model), data_trees, pref_rows)


@pytest.fixture(scope="module")
def usual_records(data_trees, tmp_path_factory) -> list[dict]:
    """The records (images as stored) that the untouched manifest tree builds."""
    tmp = tmp_path_factory.mktemp("usual-records")
    data_trees.manifest(tmp / "src")
    assert main(["data", "build", "--frames", str(tmp / "src"), "--out", str(tmp / "out"), *MANIFEST_BUILD]) == 0
    return raw_images(load_dataset(tmp / "out")).to_list()


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gets_one_clear_error_and_leaves_nothing(name, inputs_factory, tmp_path, capsys, monkeypatch):
    setup, names, fix, leaves = CASES[name]
    inputs = inputs_factory(tmp_path)
    argv = setup(inputs)
    before = snapshot(tmp_path)
    monkeypatch.setattr(cli.console, "width", 100_000)  # one message, one line: no wrapping inside paths
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, f"exit {code}, expected 2:\n{err}"
    assert sum(line.lstrip().startswith("error:") for line in err.splitlines()) == 1, err
    message = err.split("error:", 1)[1]
    assert re.search(names, message, re.S), f"the message does not name the input ({names!r}):\n{message}"
    assert re.search(fix, message, re.S | re.I), f"the message does not say what to do ({fix!r}):\n{message}"
    after = snapshot(tmp_path)
    assert {path: digest for path, digest in after.items() if path not in leaves} == before, \
        "the failed command left files behind or changed its inputs"
    assert set(leaves) <= set(after), f"the failed command did not write {leaves}"


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_accepted_input_builds_the_usual_records(name, inputs_factory, usual_records, tmp_path, capsys):
    code = main(ACCEPTED[name](inputs_factory(tmp_path)))
    assert code == 0, capsys.readouterr().err
    assert not (tmp_path / "out" / "invalid.csv").exists()
    assert raw_images(load_dataset(tmp_path / "out")).to_list() == usual_records


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 25
    kinds = {name.split("-")[0] for name in CASES}
    assert kinds >= {"config", "data", "dataset", "review", "model", "checkpoint"}
