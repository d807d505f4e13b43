"""The MTFL parser on the real files' quirks and on malformed lines; image loading errors."""

from __future__ import annotations

import numpy as np
import pytest

from facemtl.train.mtfl import (AnnotationError, DataError, load_images, load_split, parse_line, read_annotations,
                        split_train_val, validation_mask)


def test_parses_windows_separators_leading_spaces_crlf_and_blank_lines(tmp_path):
    f = tmp_path / "training.txt"
    f.write_bytes(
        b"lfw_5590\\A_0001.jpg 1 2 3 4 5 6 7 8 9 10 1 2 2 3\r\n"
        b" net_7876\\B.jpg 1.5 2 3 4 5 6 7 8 9 10.25 2 1 1 5\r\n"
        b"\r\n"
    )
    ann = read_annotations(f)
    assert ann.paths == ["lfw_5590/A_0001.jpg", "net_7876/B.jpg"]
    assert ann.lines == [1, 2]
    # 1-based in the file, 0-based pixel-index coordinates in memory
    np.testing.assert_allclose(ann.points[0], [[0, 5], [1, 6], [2, 7], [3, 8], [4, 9]])
    assert ann.points[1][0, 0] == 0.5 and ann.points[1][4, 1] == 9.25
    # attributes are 1-based in the file, class ids 0-based
    assert ann.labels["gender"].tolist() == [0, 1]
    assert ann.labels["smile"].tolist() == [1, 0]
    assert ann.labels["glasses"].tolist() == [1, 0]
    assert ann.labels["pose"].tolist() == [2, 4]


@pytest.mark.parametrize(
    "line, message",
    [
        ("a.jpg 1 2 3 4 5 6 7 8 9 10 1 2 2", "expected 15 fields"),
        ("a.jpg 1 2 3 x 5 6 7 8 9 10 1 2 2 3", "coordinates must be numbers"),
        ("a.jpg 1 2 3 4 5 6 7 8 9 nan 1 2 2 3", "finite"),
        ("a.jpg 1 2 3 4 5 6 7 8 9 10 3 2 2 3", "gender must be 1..2"),
        ("a.jpg 1 2 3 4 5 6 7 8 9 10 1 2 2 6", "pose must be 1..5"),
        ("a.jpg 1 2 3 4 5 6 7 8 9 10 1 2 2 3.5", "pose must be an integer"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, line, message):
    f = tmp_path / "testing.txt"
    f.write_text("AFLW/ok.jpg 1 2 3 4 5 6 7 8 9 10 1 2 2 3\n\n " + line + "\n")
    with pytest.raises(AnnotationError) as e:
        read_annotations(f)
    assert f"{f}:3:" in str(e.value)
    assert message in str(e.value)


def test_parse_line_blank_is_none():
    assert parse_line("   \r", "x:1") is None


def test_empty_annotation_file_is_an_error(tmp_path):
    f = tmp_path / "training.txt"
    f.write_text("\n\n")
    with pytest.raises(DataError, match="no annotations"):
        read_annotations(f)


def test_missing_data_folder_and_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_split(tmp_path / "nope", "training")
    with pytest.raises(DataError, match="has no training.txt"):
        load_split(tmp_path, "training")


def test_bad_images_are_listed_or_skipped_and_counted(tiny_mtfl, tmp_path):
    import shutil

    root = tmp_path / "mtfl"
    shutil.copytree(tiny_mtfl, root)
    ann = load_split(root, "testing")
    (root / ann.paths[3]).unlink()
    (root / ann.paths[7]).write_bytes(b"not a jpeg")
    with pytest.raises(DataError) as e:
        load_images(ann)
    msg = str(e.value)
    assert "2 image(s)" in msg and ann.paths[3] in msg and ann.paths[7] in msg
    assert f"testing.txt:{ann.lines[3]}" in msg
    got = load_images(ann, skip_bad=True)
    assert len(got) == len(ann) - 2
    assert len(got.skipped) == 2
    assert ann.paths[3] not in got.annotations.paths


def test_validation_split_is_deterministic_and_disjoint():
    paths = [f"lfw_5590/p{i}.jpg" for i in range(2000)]
    m1 = validation_mask(paths, 0.1)
    m2 = validation_mask(list(reversed(paths)), 0.1)[::-1]
    assert (m1 == m2).all(), "the split must not depend on file order"
    assert 0.07 < m1.mean() < 0.13


def test_real_files_parse(mtfl_dir):
    tr = load_split(mtfl_dir, "training")
    te = load_split(mtfl_dir, "testing")
    assert len(tr) == 10000 and len(te) == 2995
    assert all("\\" not in p for p in tr.paths)
    # class balance as documented in the data set's README
    assert np.bincount(tr.labels["pose"]).tolist() == [136, 1113, 7445, 1111, 195]
    assert np.bincount(te.labels["gender"]).tolist() == [1173, 1822]
    a, b = split_train_val(tr, 0.1)
    assert len(a) + len(b) == 10000 and not set(a.paths) & set(b.paths)
