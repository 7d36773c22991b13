"""Own-data readers (`medsynth_nb.sources`): layouts on real-format folders, the model's grid in millimetres, lazy
slices in the pipeline's orientation, and a split that really holds subjects out."""
import json

import numpy as np
import pytest
import torch

from medsynth_nb.data import load_nifti, save_nifti, samples_root
from medsynth_nb.phantom import axial_slices
from medsynth_nb.sources import (Grid, Subject, VolumeSlices, conform, contrast_folders, detect_layout, dose_manifest,
                                 nnunet_dataset, read_layout, split_subjects, subject_folders)

S = samples_root()


def _mprage(field="1.5T"):
    return load_nifti(S / f"mprage_{field}.nii.gz")


def _bright_point_volume(shape=(20, 24, 18), at=(7, 9, 5)):
    v = np.zeros(shape, np.float32); v[at] = 1.0
    return v


@pytest.mark.parametrize("axcodes_affine", [
    np.diag([2.0, 2.0, 2.0, 1.0]),                                    # RAS
    np.array([[-2, 0, 0, 30], [0, -2, 0, 40], [0, 0, 2, -10], [0, 0, 0, 1.0]]),   # LPS
    np.array([[0, 0, 2, -5], [2, 0, 0, 3], [0, 2, 0, 7], [0, 0, 0, 1.0]]),        # axes permuted
])
def test_conform_keeps_millimetres(tmp_path, axcodes_affine):
    "A bright voxel lands, after conforming to RAS at the same voxel size, at the same world position."
    at = (7, 9, 5)
    save_nifti(tmp_path / "p.nii.gz", _bright_point_volume(at=at), axcodes_affine)
    vol, aff = conform(tmp_path / "p.nii.gz", Grid((24, 24, 24), (2.0, 2.0, 2.0)), order=0)
    import nibabel as nib
    assert nib.aff2axcodes(aff) == ("R", "A", "S")
    hit = np.argwhere(vol > 0.5)
    assert len(hit) == 1
    world_in = axcodes_affine @ np.array([*at, 1.0])
    world_out = aff @ np.array([*hit[0], 1.0])
    np.testing.assert_allclose(world_out, world_in, atol=1e-6)


def test_conform_resamples_voxel_size(tmp_path):
    "1 mm → 2 mm: a block of constant intensity keeps its value and its extent in mm."
    v = np.zeros((40, 40, 40), np.float32); v[10:30, 12:28, 8:32] = 5.0
    save_nifti(tmp_path / "b.nii.gz", v, np.diag([1.0, 1.0, 1.0, 1.0]))
    out, aff = conform(tmp_path / "b.nii.gz", Grid((20, 20, 20), (2.0, 2.0, 2.0)), order=1)
    np.testing.assert_allclose(np.diag(aff)[:3], [2.0, 2.0, 2.0])
    assert abs(out.max() - 5.0) < 1e-4
    vox = (out > 2.5).sum(axis=(1, 2)).nonzero()[0]
    assert len(vox) == 10           # 20 mm along x at 2 mm


def test_volume_slices_match_the_phantom_orientation(tmp_path):
    "On its own RAS grid a volume passes through unchanged and is sliced exactly like phantom.axial_slices."
    data, aff, _ = _mprage()
    (tmp_path / "s1").mkdir(); save_nifti(tmp_path / "s1" / "t1.nii.gz", data, aff)
    subs = subject_folders(tmp_path, ("t1",))
    ds = VolumeSlices(subs, Grid(data.shape, (2.0, 2.0, 2.0)))
    for j in (20, 47, 70):
        item = ds[j]
        ref = axial_slices(np.maximum(data, 0), z=[j])
        torch.testing.assert_close(item["t1"], ref, atol=2e-4, rtol=1e-5)
        assert int(item["slice"]) == j


def test_pair_is_resampled_onto_the_reference(tmp_path):
    "The second role is resampled onto the first one's conformed grid: a pair stored with different FOVs aligns."
    a, aff, _ = _mprage("1.5T")
    d = tmp_path / "sub-01"; d.mkdir()
    save_nifti(d / "t1.nii.gz", a, aff)
    shifted = aff.copy(); shifted[:3, 3] += aff[:3, :3] @ np.array([6, 0, 0])
    save_nifti(d / "t2.nii.gz", a[6:], shifted)               # the same anatomy, a smaller field of view
    ds = VolumeSlices(subject_folders(tmp_path, ("t1", "t2")), Grid((90, 110, 90)))
    v = ds.volumes(0)
    both = (v["t2"] > 0) & (v["t1"] > 0)
    assert both.sum() > 1000
    torch.testing.assert_close(v["t2"][both], v["t1"][both], atol=1e-3, rtol=1e-3)


def test_labels_are_not_interpolated(tmp_path):
    a, aff, _ = _mprage()
    d = tmp_path / "case"; d.mkdir()
    save_nifti(d / "t1.nii.gz", a, aff)
    lab = (a > np.percentile(a, 60)).astype(np.uint8) + (a > np.percentile(a, 90)).astype(np.uint8)
    save_nifti(d / "case_seg.nii.gz", lab, aff)
    ds = VolumeSlices(subject_folders(tmp_path, ("t1", "seg")), Grid((65, 81, 65), (2.4, 2.4, 2.4)))
    seg = ds.volumes(0)["seg"].numpy()
    _, out_aff = conform(d / "t1.nii.gz", ds.grid)
    # order 0: every output voxel holds the label of the input voxel nearest to it in millimetres
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in seg.shape], indexing="ij"), -1).reshape(-1, 3)
    src = np.rint((np.linalg.inv(aff) @ out_aff @ np.c_[ijk, np.ones(len(ijk))].T)[:3].T).astype(int)
    ok = np.all((src >= 0) & (src < np.array(lab.shape)), axis=1)
    assert ok.mean() > 0.5
    expected = lab[tuple(src[ok].T)]
    assert (seg.reshape(-1)[ok] == expected).mean() > 0.999


def test_cache_is_bounded_and_lazy(tmp_path):
    a, aff, _ = _mprage()
    for k in range(4):
        (tmp_path / f"s{k}").mkdir(); save_nifti(tmp_path / f"s{k}" / "t1.nii.gz", a[::3, ::3, ::3], aff)
    ds = VolumeSlices(read_layout(tmp_path, ("t1",)), Grid((16, 16, 16), (6.0, 6.0, 6.0)), cache=2)
    assert len(ds._volumes) == 0
    for k in (0, 16, 32, 48): ds[k + 3]
    assert list(ds._volumes) == [2, 3]


def test_split_holds_subjects_out():
    subs = [Subject(f"IXI{k:03d}", {}) for k in range(37)]
    for seed in range(5):
        tr, va = split_subjects(subs, 0.2, seed)
        assert len(va) == 8 and len(tr) == 29
        assert not {s.id for s in tr} & {s.id for s in va}
        assert {s.id for s in split_subjects(subs[::-1], 0.2, seed)[1]} == {s.id for s in va}
    assert len({frozenset(s.id for s in split_subjects(subs, 0.2, seed)[1]) for seed in range(5)}) > 1


def test_layout_errors_name_the_file(tmp_path):
    (tmp_path / "A").mkdir(); (tmp_path / "A" / "t1.nii.gz").write_bytes(b"not a nifti")
    ds = VolumeSlices(subject_folders(tmp_path, ("t1",)), Grid((8, 8, 8)))
    with pytest.raises(ValueError, match=r"A/t1.nii.gz as NIfTI"): ds[0]
    (tmp_path / "m.csv").write_text("subject,dose,path\nA,1,A/t1.nii.gz\n")
    with pytest.raises(ValueError, match="subject 'A' has no native image"): dose_manifest(tmp_path / "m.csv")
    nn = tmp_path / "nn"; (nn / "imagesTr").mkdir(parents=True)
    (nn / "dataset.json").write_text(json.dumps({"modality": {"0": "T1"}}))
    with pytest.raises(ValueError, match="no NIfTI files"): nnunet_dataset(nn, ("T1",))
    assert detect_layout({"t1": tmp_path}) == "contrast-folders"
    with pytest.raises(ValueError, match=r"lack a role"):
        (tmp_path / "T2").mkdir(); (tmp_path / "T1").mkdir()
        save_nifti(tmp_path / "T1" / "x-T1.nii.gz", np.ones((2, 2, 2), np.float32))
        save_nifti(tmp_path / "T2" / "y-T2.nii.gz", np.ones((2, 2, 2), np.float32))
        contrast_folders({"T1": tmp_path / "T1", "T2": tmp_path / "T2"})
