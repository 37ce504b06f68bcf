import numpy as np
import pytest

from scipy import ndimage

from medgan.metrics import body_mask, dice_per_class, intensity_stats_per_class, paired_metrics
from tests.conftest import DATA_DIR, requires_data


def _ct(shape=(40, 40, 20)):
    ct = np.full(shape, -1000.0, np.float32)
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    body = (i - 20) ** 2 + (j - 20) ** 2 < 15**2
    ct[body] = 40.0
    ct[18:22, 18:22] = -900  # an air pocket inside the body, filled by the mask
    return ct, body


def _box_mean(x: np.ndarray, win: int = 7) -> np.ndarray:
    """Mean over a win^3 window with mirrored borders (d c b a | a b c d), by a summed-area table."""
    r = win // 2
    p = np.pad(x, r, mode="symmetric")
    c = np.zeros(tuple(n + 1 for n in p.shape))
    c[1:, 1:, 1:] = p.cumsum(0).cumsum(1).cumsum(2)
    n0, n1, n2 = x.shape
    s = (c[win:win + n0, win:win + n1, win:win + n2] - c[:n0, win:win + n1, win:win + n2]
         - c[win:win + n0, :n1, win:win + n2] - c[win:win + n0, win:win + n1, :n2]
         + c[:n0, :n1, win:win + n2] + c[:n0, win:win + n1, :n2] + c[win:win + n0, :n1, :n2] - c[:n0, :n1, :n2])
    return s / win ** 3


def _reference_synthrad(ct, sct, mask, lo=-1024.0, hi=3000.0):
    """SynthRAD2025's three image metrics written out plainly from their definition (issue 13),
    sharing no code with medgan.metrics: summed-area-table windows, explicit 2x2x2 averaging."""
    m = mask > 0
    ct = np.where(m, ct, -1024.0).astype(np.float64)
    sct = np.where(m, sct, -1024.0).astype(np.float64)
    mae = np.abs(ct * m - sct * m).sum() / m.sum()
    a, b = np.clip(ct, lo, hi)[m], np.clip(sct, lo, hi)[m]
    psnr = 10 * np.log10((hi - lo) ** 2 / np.mean((a - b) ** 2))
    x = np.where(m, np.clip(ct, lo, hi), lo) - lo
    y = np.where(m, np.clip(sct, lo, hi), lo) - lo
    pads = [((97 - n) // 2 if n < 97 else 0, 97 - n - (97 - n) // 2 if n < 97 else 0) for n in x.shape]
    x, y, mm = np.pad(x, pads, mode="edge"), np.pad(y, pads, mode="edge"), np.pad(m, pads, mode="edge")
    R = hi - lo
    C1, C2 = (0.01 * R) ** 2, (0.03 * R) ** 2
    C3 = C2 / 2
    prod = 1.0
    for w in (0.0448, 0.2856, 0.3001, 0.2363, 0.1333):
        N = 7 ** 3
        ux, uy = _box_mean(x), _box_mean(y)
        vx = N / (N - 1) * (_box_mean(x * x) - ux ** 2)
        vy = N / (N - 1) * (_box_mean(y * y) - uy ** 2)
        vxy = N / (N - 1) * (_box_mean(x * y) - ux * uy)
        sx, sy = np.sqrt(np.clip(vx, 0, None)), np.sqrt(np.clip(vy, 0, None))
        L = np.clip((2 * ux * uy + C1) / (ux ** 2 + uy ** 2 + C1), 0, None)
        C = np.clip((2 * sx * sy + C2) / (vx + vy + C2), 0, None)
        S = np.clip((vxy + C3) / (sx * sy + C3), 0, None)
        ssim = (L ** w * C ** w * S ** w)[3:-3, 3:-3, 3:-3]
        prod *= np.clip(ssim[mm[3:-3, 3:-3, 3:-3]].mean(), 0, 1)

        def halve(v):  # mean of v over {i-1, i} x {j-1, j} x {k-1, k} (zero before the start), every 2nd voxel
            q = np.pad(v, ((1, 0), (1, 0), (1, 0)))
            s = sum(q[di:di + v.shape[0], dj:dj + v.shape[1], dk:dk + v.shape[2]]
                    for di in (0, 1) for dj in (0, 1) for dk in (0, 1)) / 8
            return s[::2, ::2, ::2]
        x, y, mm = halve(x), halve(y), mm[::2, ::2, ::2]
    return {"mae_hu": mae, "psnr_db": psnr, "ms_ssim": prod}


@requires_data
@pytest.mark.parametrize("name", ["abdomen/ct/ts-ct-01.nii.gz", "thorax/ct/ts-ct-02.nii.gz"])
def test_synthrad2025_metrics_match_their_definition_on_real_ct(name):
    """medgan's MAE / PSNR / MS-SSIM against the plain implementation above, on a real CT (one
    under 97 voxels along an axis: the padding path) and a perturbed copy (noise, blur, an HU
    offset inside an organ-sized block, metal-like values above 3000 HU)."""
    from medgan.io import read_volume

    ct = read_volume(DATA_DIR / name).array
    rng = np.random.default_rng(0)
    sct = ndimage.gaussian_filter(ct, 1.0) + rng.normal(0, 25, ct.shape)
    sct[10:40, 20:50, 5:15] += 60
    sct[50:52, 50:52, 10:12] = 3500
    mask = body_mask(ct)
    got = paired_metrics(sct, ct, mask)
    want = _reference_synthrad(ct, sct, mask)
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-7, abs=1e-9), k
    assert 0.5 < got["ms_ssim"] < 0.999 and got["mae_hu"] > 10  # a real difference, not a degenerate case


def test_paired_metrics_identity_offset_and_clipping():
    ct, body = _ct()
    same = paired_metrics(ct, ct)
    assert same["mae_hu"] == 0 and same["ms_ssim"] == pytest.approx(1.0) and np.isinf(same["psnr_db"])
    shifted = paired_metrics(ct + 50, ct)
    assert shifted["mae_hu"] == pytest.approx(50, abs=1e-3)
    assert shifted["mask_voxels"] == int(body.sum()) * ct.shape[2]
    assert shifted["psnr_db"] == pytest.approx(20 * np.log10(4024 / 50), rel=1e-6)  # over the mask only, range 4024
    hot = ct.copy()
    hot[body] = 5000.0  # above 3000 HU: clipped for PSNR, not for MAE
    m3 = body[..., None].repeat(ct.shape[2], 2)
    inside = paired_metrics(hot, ct, m3)
    assert inside["mae_hu"] == pytest.approx(np.mean(5000 - ct[m3]), rel=1e-6)
    assert inside["psnr_db"] == pytest.approx(10 * np.log10(4024**2 / np.mean((3000 - ct[m3]) ** 2)), rel=1e-6)


def test_hd95_of_a_shifted_sphere_is_the_shift():
    """Anisotropic voxels (0.8 x 0.8 x 2.5 mm); the sphere moved 3 slices (7.5 mm) and 4 voxels
    in-plane (3.2 mm): HD95 in mm within half a voxel of the shift."""
    from medgan.metrics import hd95_per_class

    spacing = (0.8, 0.8, 2.5)
    shape = (90, 90, 40)
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij"), -1)
    centre = np.array([36.0, 36.0, 50.0])

    def sphere(c):
        return (np.linalg.norm(grid - c, axis=-1) < 20).astype(int)

    for shift in ([0, 0, 7.5], [3.2, 0, 0]):
        d = hd95_per_class(sphere(centre + shift), sphere(centre), ["ball"], spacing)["ball"]
        # the 95th percentile of a shifted sphere's surface distances is 0.95 x the shift
        assert abs(d - np.linalg.norm(shift)) <= 0.5 * max(spacing[int(np.argmax(np.abs(shift)))], 0.8), (shift, d)
    same = hd95_per_class(sphere(centre), sphere(centre), ["ball"], spacing)["ball"]
    assert same == 0
    assert np.isnan(hd95_per_class(np.zeros(shape, int), sphere(centre), ["ball"], spacing)["ball"])


def test_body_mask_fills_holes():
    ct, body = _ct()
    assert body_mask(ct)[:, :, 0].sum() == body.sum()


def test_dice_per_class():
    a = np.zeros((10, 10, 10), int)
    b = np.zeros((10, 10, 10), int)
    a[:5] = 1
    b[:5] = 1
    b[5:6] = 2
    d = dice_per_class(a, b, ["x", "y", "z"])
    assert d["x"] == pytest.approx(1.0) and d["y"] == 0.0 and np.isnan(d["z"])


def test_intensity_stats():
    img = np.arange(8, dtype=float).reshape(2, 2, 2)
    lab = np.zeros((2, 2, 2), int)
    lab[0] = 1
    s = intensity_stats_per_class(img, lab, ["a", "b"])
    assert s["a"]["mean"] == pytest.approx(1.5) and "b" not in s
