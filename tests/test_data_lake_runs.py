"""Lake's 20 one-shot runs: the real ``all_runs.zip`` (``$OMNIGLOT_DIR``) and hand-made broken ones."""
from __future__ import annotations

import zipfile

import cv2
import numpy as np
import pytest

from oneshot.data.lake_runs import read_lake_runs
from oneshot.embedder.preprocess import Recipe


@pytest.fixture(scope="module")
def runs(omniglot_dir):
    return read_lake_runs(omniglot_dir)


def test_twenty_runs_of_twenty(runs):
    assert [run.name for run in runs] == [f"run{i:02d}" for i in range(1, 21)]
    for run in runs:
        assert len(run.training) == 20 and len(run.test) == 20
        assert run.answers.dtype == np.int64
        assert sorted(run.answers) == list(range(20))  # each training class is asked once
        assert len(set(run.training)) == 20 and not set(run.training) & set(run.test)


def test_images_are_105_square(runs):
    for run in runs[:3]:
        for image in run.training_images() + run.test_images():
            assert image.shape == (105, 105) and image.dtype == np.uint8


def test_answers_match_the_pixels(runs):
    """Raw-pixel nearest neighbour is ~24% right over the runs; wrong answers would give ~5%."""
    recipe = Recipe(size=28)
    correct = 0
    for run in runs:
        train = recipe.batch(run.training_images()).reshape(20, -1)
        test = recipe.batch(run.test_images()).reshape(20, -1)
        train /= np.linalg.norm(train, axis=1, keepdims=True)
        test /= np.linalg.norm(test, axis=1, keepdims=True)
        correct += int(((test @ train.T).argmax(axis=1) == run.answers).sum())
    assert correct / 400 > 0.15


def test_zip_path_and_extracted_folder_agree(runs, omniglot_dir, tmp_path):
    zipped = read_lake_runs(omniglot_dir / "all_runs.zip")
    assert [r.answers.tolist() for r in zipped] == [r.answers.tolist() for r in runs]
    with zipfile.ZipFile(omniglot_dir / "all_runs.zip") as archive:
        members = [m for m in archive.namelist() if m.startswith(("run01/", "run02/"))]
        archive.extractall(tmp_path / "all_runs", members)
    for location in (tmp_path, tmp_path / "all_runs"):
        extracted = read_lake_runs(location)
        assert [r.name for r in extracted] == ["run01", "run02"]
        for got, want in zip(extracted, runs[:2]):
            assert got.training == want.training and got.test == want.test
            np.testing.assert_array_equal(got.answers, want.answers)
            np.testing.assert_array_equal(got.test_images()[3], want.test_images()[3])


def _fake_run(root, lines):
    run = root / "run01"
    for folder, stem in (("training", "class"), ("test", "item")):
        (run / folder).mkdir(parents=True, exist_ok=True)
        for i in (1, 2):
            cv2.imwrite(str(run / folder / f"{stem}{i:02d}.png"), np.full((8, 8), 255, np.uint8))
    (run / "class_labels.txt").write_text(lines)
    return root


def test_small_folder_run(tmp_path):
    runs = read_lake_runs(_fake_run(tmp_path, "run01/test/item01.png run01/training/class02.png\n"
                                              "run01/test/item02.png run01/training/class01.png\n"))
    assert len(runs) == 1 and runs[0].answers.tolist() == [1, 0]


def test_malformed_labels_name_the_file(tmp_path):
    _fake_run(tmp_path, "run01/test/item01.png\n")
    with pytest.raises(ValueError, match=r"run01/class_labels\.txt: expected lines"):
        read_lake_runs(tmp_path)


def test_missing_image_is_named(tmp_path):
    _fake_run(tmp_path, "run01/test/item09.png run01/training/class01.png\n")
    with pytest.raises(ValueError, match=r"class_labels\.txt: image run01/test/item09\.png listed but not found"):
        read_lake_runs(tmp_path)


def test_no_runs(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ValueError, match="no runNN/class_labels.txt found"):
        read_lake_runs(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError):
        read_lake_runs(tmp_path / "absent")
