"""Faces: detection and alignment, rejects for photos without a face, several faces, the shipped face
model (its conversion from dlib's file, its thresholds' provenance) and the model chosen for a
gallery when none is named.

The face photo is matplotlib's bundled sample ``grace_hopper.jpg`` (a US Navy photograph in the
public domain); nothing here downloads. dlib (``pip install 'oneshot[face]'``, in the dev extra)
runs the detector; where it is missing those tests skip with that reason.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from matplotlib import cbook

from oneshot.embedder.artifact import DEFAULT_MODEL, FACE_MODEL, load_model, model_path, read_model_config
from oneshot.embedder.dlib_format import read_dlib_face_resnet
from oneshot.embedder.preprocess import Recipe
from oneshot.errors import CorruptFileError, InvalidInputError

needs_dlib = pytest.mark.skipif(importlib.util.find_spec("dlib") is None,
                                reason="dlib is not installed (pip install 'oneshot[face]')")


def _dlib_original() -> Path | None:
    """dlib's own face ResNet file, where face-recognition-models is installed (the dev extra)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = Path(list(spec.submodule_search_locations)[0]) / "models" / "dlib_face_recognition_resnet_model_v1.dat"
    return found if found.is_file() else None


@pytest.fixture(scope="module")
def hopper() -> np.ndarray:
    image = cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    assert image is not None and image.shape == (600, 512, 3)
    return image


@pytest.fixture(scope="module")
def face_model():
    return load_model("face")


def _two_faces(image: np.ndarray) -> np.ndarray:
    """The photo beside a half-size copy of itself: two faces, the left one larger."""
    small = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
    both = np.full((image.shape[0], image.shape[1] + small.shape[1], 3), 127, np.uint8)
    both[:, : image.shape[1]] = image
    both[: small.shape[0], image.shape[1]:] = small
    return both


# ------------------------------------------------------------------ detection and alignment


@needs_dlib
def test_one_face_is_found_and_aligned(hopper):
    from oneshot.embedder.faces import face_finder

    face = face_finder().face(hopper)
    assert face.chip.shape == (150, 150, 3) and face.chip.dtype == np.uint8
    x, y, w, h = face.box
    assert 100 < x < 250 and 80 < y < 250 and 150 < w < 300  # the face, not the whole 512x600 photo
    assert face.faces_in_photo == 1 and face.note == ""


@needs_dlib
def test_several_faces_use_the_largest_and_say_so(hopper):
    from oneshot.embedder.faces import face_finder

    finder = face_finder()
    found = finder.faces(_two_faces(hopper))
    assert len(found) == 2
    assert found[0].box[2] > 1.6 * found[1].box[2]  # largest first
    face = finder.face(_two_faces(hopper))
    assert face.box == found[0].box and face.box[0] < hopper.shape[1]  # the big, left one
    assert face.note.startswith("2 faces found; used the largest, at x=")


@needs_dlib
def test_no_face_is_an_error_never_the_whole_picture():
    from oneshot.embedder.faces import NoFaceError, face_finder

    blank = np.full((200, 200, 3), 200, np.uint8)
    with pytest.raises(NoFaceError, match="no face found"):
        face_finder().face(blank)
    noise = np.random.default_rng(0).integers(0, 256, (240, 320), dtype=np.uint8)
    with pytest.raises(NoFaceError):
        face_finder().face(noise)


@needs_dlib
def test_recipe_prepare_leaves_out_faceless_photos(hopper, face_model):
    blank = np.full((200, 200, 3), 90, np.uint8)
    prepared = face_model.recipe.prepare([blank, hopper, _two_faces(hopper)])
    assert prepared.pixels.shape == (2, 3, 150, 150) and prepared.pixels.dtype == np.float32
    assert prepared.kept.tolist() == [1, 2]
    assert prepared.reasons == {0: "no face found"}
    assert list(prepared.notes) == [2] and "2 faces" in prepared.notes[2]


@needs_dlib
def test_whole_mode_takes_a_crop_as_the_face(hopper):
    recipe = Recipe.from_dict({**load_model("face").recipe.to_dict(), "faces": "whole"})
    crop = hopper[130:370, 150:390]  # already a face crop, as in pre-cropped galleries
    assert recipe(crop).shape == (3, 150, 150)


def test_face_recipe_fields_round_trip_and_old_recipes_are_unchanged():
    recipe = Recipe(size=150, kind="face", channels=3, mean=[0.5, 0.5, 0.5], std=[1.0, 1.0, 1.0], faces="whole")
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    assert "faces" not in Recipe().to_dict() and "faces" not in Recipe(kind="photo", channels=3).to_dict()
    with pytest.raises(InvalidInputError, match="faces must be one of"):
        Recipe(kind="face", channels=3, faces="some")
    with pytest.raises(InvalidInputError, match="square RGB"):
        Recipe(kind="face", channels=1)


# ------------------------------------------------------------------ the shipped face model


def test_shipped_face_model_loads_by_name_with_its_provenance(face_model):
    assert model_path("face") == FACE_MODEL and model_path(None) == DEFAULT_MODEL
    assert face_model.recipe.kind == "face" and face_model.dim == 128 and face_model.metric == "cosine"
    info = read_model_config(FACE_MODEL)["info"]
    assert "CC0" in info["licence"] and len(info["source_sha256"]) == 64
    for kind in ("verification", "unknown"):
        found = info["thresholds"][kind]
        assert 0.5 < found["value"] < 1.0
        assert "lfw_dev" in found["calibrated_on"]  # the dev half of LFW's people, never the reported half
        assert found["command"].startswith("oneshot calibrate")


@needs_dlib
def test_face_vectors_separate_the_same_person_from_noise(hopper, face_model):
    from oneshot.embedder.encode import encode

    views = [hopper, cv2.flip(hopper, 1), hopper[40:500, 60:480],
             cv2.resize(hopper, (256, 300), interpolation=cv2.INTER_AREA)]
    vectors = encode(face_model, views)
    assert vectors.shape == (4, 128)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    same = vectors @ vectors.T
    threshold = read_model_config(FACE_MODEL)["info"]["thresholds"]["verification"]["value"]
    assert same.min() > threshold  # four views of one person: all "same" at the calibrated threshold


def test_shipped_weights_are_dlibs_weights_exactly():
    original = _dlib_original()
    if original is None:
        pytest.skip("face-recognition-models (dlib's original file) is not installed")
    import torch

    state, means = read_dlib_face_resnet(original)
    shipped = load_model("face").backbone.state_dict()
    assert set(state) == set(shipped)
    for name, tensor in state.items():
        assert torch.equal(tensor, shipped[name]), name
    assert [round(m, 3) for m in means] == [122.782, 117.001, 104.298]


@needs_dlib
def test_converted_model_matches_dlib_itself(face_model):
    original = _dlib_original()
    if original is None:
        pytest.skip("face-recognition-models (dlib's original file) is not installed")
    import dlib
    import torch

    rng = np.random.default_rng(0)
    chips = [rng.integers(0, 256, (150, 150, 3), dtype=np.uint8) for _ in range(2)]
    chips.append(cv2.GaussianBlur(chips[0], (15, 15), 5))
    reference = np.array([np.array(dlib.face_recognition_model_v1(str(original)).compute_face_descriptor(c))
                          for c in chips], dtype=np.float32)
    pixels = np.stack([face_model.recipe.photo(cv2.cvtColor(c, cv2.COLOR_RGB2BGR)) for c in chips])
    with torch.no_grad():
        raw = face_model.backbone(torch.from_numpy(pixels)).numpy()  # before the head's normalisation
    np.testing.assert_allclose(raw, reference, atol=1e-5)


def test_dlib_reader_refuses_other_files(tmp_path):
    bad = tmp_path / "not_dlib.dat"
    bad.write_bytes(b"\x01\x01\x01\x05hello" + bytes(100))
    with pytest.raises(CorruptFileError, match="not_dlib.dat"):
        read_dlib_face_resnet(bad)
    short = tmp_path / "short.dat"
    short.write_bytes(b"")
    with pytest.raises(CorruptFileError, match="short.dat"):
        read_dlib_face_resnet(short)


# ------------------------------------------------------------------ jobs


def _people(root: Path, hopper: np.ndarray) -> Path:
    """people/<name>/<photo>.jpg: Grace Hopper twice, and a photo with no face."""
    (root / "grace").mkdir(parents=True)
    cv2.imwrite(str(root / "grace" / "a.jpg"), hopper)
    cv2.imwrite(str(root / "grace" / "b.jpg"), cv2.flip(hopper, 1))
    (root / "nobody").mkdir()
    cv2.imwrite(str(root / "nobody" / "wall.jpg"), np.full((240, 240, 3), (40, 120, 200), np.uint8))
    cv2.imwrite(str(root / "grace" / "two.jpg"), _two_faces(hopper))
    return root


@needs_dlib
def test_embed_job_rejects_faceless_photos_and_notes_several_faces(tmp_path, hopper):
    from oneshot.pipelines.jobs.embed import embed_to_store
    from oneshot.pipelines.reading import RejectPolicy, Rejects

    people = _people(tmp_path / "people", hopper)
    rejects = Rejects()
    result = embed_to_store(people, tmp_path / "store", rejects=rejects)  # no model named: faces -> face model
    assert result.model_choice.startswith("the face model")
    assert len(result.store) == 3 and result.store.manifest["job"]["model_fingerprint"] == load_model("face").fingerprint
    assert rejects.items == [("nobody/wall.jpg", "no face found")]
    assert [path for path, _ in rejects.notes] == ["grace/two.jpg"]
    table = (tmp_path / "store.rejects.csv").read_text().splitlines()
    assert table == ["path,reason", "nobody/wall.jpg,no face found"]
    assert "2 faces found" in (tmp_path / "store.notes.csv").read_text()
    with pytest.raises(InvalidInputError, match="wall.jpg: no face found"):
        embed_to_store(people, tmp_path / "strict", model="face", rejects=Rejects(RejectPolicy("fail")))


@needs_dlib
def test_verify_without_a_model_uses_the_face_model(tmp_path, hopper):
    from oneshot.embedder.faces import NoFaceError
    from oneshot.pipelines.jobs.verify import verify_images

    people = _people(tmp_path / "people", hopper)
    answer = verify_images(people / "grace" / "a.jpg", people / "grace" / "b.jpg")
    assert answer["same"] is True and answer["model_choice"].startswith("the face model")
    assert "lfw_dev" in answer["threshold_source"]
    with pytest.raises(NoFaceError, match="wall.jpg: no face found"):
        verify_images(people / "grace" / "a.jpg", people / "nobody" / "wall.jpg", model="face")


def test_handwriting_keeps_the_handwriting_model():
    from oneshot.data.synthetic import make_alphabets
    from oneshot.embedder.shipped import choose_shipped_model

    images = list(make_alphabets(1, 4, drawers=3, seed=0).images)
    path, reason = choose_shipped_model(images)
    assert path == DEFAULT_MODEL and reason.startswith("the handwriting model: the images look like handwriting")


def test_cli_model_option_takes_shipped_names(tmp_path):
    from click.testing import CliRunner

    from oneshot.pipelines.cli import main

    result = CliRunner().invoke(main, ["embed", str(tmp_path), "--out", str(tmp_path / "s"), "--model", "nonesuch"])
    assert result.exit_code == 2 and "neither a model file nor a shipped model" in result.output


@needs_dlib
def test_ray_decode_step_rejects_faceless_photos(tmp_path, hopper):
    from oneshot.data.source import open_source
    from oneshot.pipelines.engines.ray_decode import decode_batch

    class Held:  # what SharedObject gives a Ray task, without Ray
        def __init__(self, value):
            self.value = value

        def get(self):
            return self.value

    source = open_source(_people(tmp_path / "people", hopper))
    table = source.table
    batch = {"id": table["id"].to_numpy(), "path": table["path"].to_numpy(dtype=object)}
    out = decode_batch(batch, Held(source), load_model("face").recipe, None)
    by_path = dict(zip(table["path"], zip(out["reason"], out["encode"])))
    assert by_path["nobody/wall.jpg"] == ("no face found", False)
    assert all(encode and reason == "" for path, (reason, encode) in by_path.items() if path.startswith("grace/"))
    assert np.abs(out["pixels"][out["encode"]]).sum(axis=(1, 2, 3)).min() > 0


@needs_dlib
def test_all_faces_embeds_each_face_with_stable_unique_ids(tmp_path, hopper):
    from oneshot.index.dataset_store import path_ids
    from oneshot.index.store import read_embeddings
    from oneshot.pipelines.jobs.embed import embed_to_store
    from oneshot.pipelines.reading import Rejects

    people = _people(tmp_path / "people", hopper)
    rejects = Rejects()
    result = embed_to_store(people, tmp_path / "every", model="face", rejects=rejects, all_faces=True)
    table = read_embeddings(tmp_path / "every").table.sort_values(["path", "face"]).reset_index(drop=True)
    assert table["path"].tolist() == ["grace/a.jpg", "grace/b.jpg", "grace/two.jpg", "grace/two.jpg"]
    assert table["face"].tolist() == [1, 1, 1, 2]
    assert table["id"].is_unique
    assert table["id"].tolist() == path_ids([f"{p}#face{n}" for p, n in zip(table["path"], table["face"])]).tolist()
    assert rejects.items == [("nobody/wall.jpg", "no face found")] and not rejects.notes
    assert result.store.manifest["job"]["recipe"]["faces"] == "all"
    embed_to_store(people, tmp_path / "again", model="face", all_faces=True)  # stable across runs
    assert sorted(read_embeddings(tmp_path / "again").table["id"]) == sorted(table["id"])
    with pytest.raises(InvalidInputError, match="for face models"):
        embed_to_store(people, tmp_path / "hand", model="handwriting", all_faces=True)


def _face_gallery(folder: Path, hopper: np.ndarray, people: int = 6) -> Path:
    """``people`` "people": one face under different colour casts, three photos each (one mirrored)."""
    for person in range(people):
        (folder / f"p{person}").mkdir(parents=True)
        cast = np.clip(hopper.astype(np.int16) + np.array([(person * 37) % 90 - 45, person * 9 - 20, 30 - person * 11]),
                       0, 255).astype(np.uint8)
        for photo, side in enumerate((512, 440, 380)):
            view = cv2.resize(cast, (side, side * 600 // 512), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(folder / f"p{person}" / f"{photo}.jpg"), cv2.flip(view, 1) if photo == 1 else view)
    return folder


@needs_dlib
def test_train_on_face_photos_tunes_the_face_models_last_layer_with_people_folds(tmp_path, hopper):
    from oneshot.pipelines.jobs.train import train_from_cli

    people = _face_gallery(tmp_path / "people", hopper)
    cv2.imwrite(str(people / "p0" / "blank.jpg"), np.full((200, 200, 3), 90, np.uint8))
    lines = []
    result = train_from_cli(tmp_path / "run", {"val_episodes": 100}, data=str(people), show_progress=False,
                            on_recipe=lines.append)
    assert lines[0].startswith("recipe inferred: face photos (a face in")
    assert lines[1].startswith("start from the shipped face model: its last layer tuned")
    info = result.model.info
    assert result.model.recipe.kind == "face" and result.model.backbone_name == "face-resnet29"
    assert info["tuning"]["tune"] == "last-layer" and info["init"] == "face"
    assert info["validation"].startswith("3 x 2-fold over 6 people") and info["train_config"]["val_way"] == 3
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert history["step"].tolist() == [0, 25, 50, 100, 200, 300]
    assert history["val_noise"].iloc[1:].gt(0).all()
    rejected = pd.read_csv(tmp_path / "run" / "rejects.csv")  # the blank photo: a reject, not a training image
    assert rejected["reason"].tolist() == ["no face found"]
    # the rule: a step replaces the start only when its gain beats the noise across the people
    chosen = history.set_index("step").loc[result.best_step]
    if result.best_step:
        assert chosen["val_gain"] > chosen["val_noise"] and info["tuning"]["summary"].startswith("last layer tuned")
    else:
        assert info["tuning"]["summary"].startswith("kept the start")
        start = load_model("face")
        layer = start.backbone.fc.weight.detach()
        assert np.array_equal(result.model.backbone.fc.weight.detach().numpy(), layer.numpy())
    assert info["thresholds"]["verification"]["calibrated_on"].endswith("people of the training gallery (the start never trained on them)") \
        or "held out of a fold's fit" in info["thresholds"]["verification"]["calibrated_on"]
    with pytest.raises(InvalidInputError, match="are for --tune all"):
        train_from_cli(tmp_path / "bad", {"objective": "triplet"}, data=str(people), show_progress=False)


@needs_dlib
@pytest.mark.slow
def test_train_all_layers_of_the_face_model_keeps_the_start_unless_beaten(tmp_path, hopper):
    from oneshot.pipelines.jobs.train import train_from_cli

    people = _face_gallery(tmp_path / "people", hopper)
    lines = []
    result = train_from_cli(tmp_path / "run", {"steps": 2, "val_every": 1, "classes_per_batch": 2,
                                               "items_per_class": 2, "val_episodes": 50},
                            data=str(people), show_progress=False, on_recipe=lines.append, tune="all")
    assert lines[1].startswith("start from the shipped face model (every layer, --tune all")
    info = result.model.info
    assert info["init"] == "face" and info["val_noise"] is not None and info["start_accuracy"] is not None
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert history["step"].tolist() == [0, 1, 2]
    kept = history.loc[history["step"] == result.best_step, "val_accuracy"].item()
    assert result.best_step == 0 or kept > info["start_accuracy"] + info["val_noise"]
