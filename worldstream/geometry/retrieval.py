"""Camera-geometry memory retrieval, MG3-exact (official `utils/utils.py`; facts 4.9-4.11).

Three selectors:
* `select_memory_idx_fov` (what the pipelines run, facts 4.9): for each reference ("base") frame, a
  10x10x10 grid of points sampled in its frustum (x, y in [-1, 1], depth in [0.1, 30]) is projected
  into every candidate frame; the candidate seeing most points wins (first maximum on ties), and the
  confidence is that fraction. Candidates are every pixel frame in [1, start). The pipeline then
  overwrites the last pick with the anchor frame 4 (`apply_anchor`).
* `select_memory_idx_exact` (the official CPU variant, facts 4.10, unused by the pipelines): volume of
  the intersection of two convex frustums / volume of the base frustum. NOTE the official returns
  the *position in the candidate list* (frame - 1); `index_mode="candidate_position"` reproduces that.
* `select_memory_idx` (facts 4.11, probably the training sampler): multi-centre FOV overlap with
  random points in balls around 5 frames of the chunk; takes a numpy Generator.

The sampled overlap is batched over all base frames and candidates at once (numpy; chunked over
candidates only to bound memory). Arithmetic: float32, like the official path, but each base frame's
points are expressed relative to its own camera centre (the offsets are formed in float64), so
precision does not decay far from the world origin. The golden "robust" slots are matched exactly;
the documented fragile slots (revisits of an *identical* pose, where sample points sit exactly on the
candidate's near/far planes and image border) agree to the README's tolerance only, as for any
reimplementation. The visibility test |x| * 2fx/W <= z (and y) equals the official 0 <= u <= W
with u = x fx / z + W/2 except for rounding at such boundary points.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Literal

import numpy as np

from worldstream.geometry.camera import MG3_SCHEDULE, ClipSchedule, ClipWindow, check_c2ws, intrinsics_90fov


@dataclass(frozen=True)
class RetrievalConfig:
    # --- sampled frustum overlap (facts 4.9)
    grid_size: int = 10  # points per axis: x, y in linspace(-1, 1), depth in linspace(near, far)
    near: float = 0.1  # depth range of the samples and of the visibility test (extrinsic units)
    far: float = 30.0
    ref_height: int = 720  # NOTE retrieval uses K for 1280x720, not the 704x1280 generation size
    ref_width: int = 1280
    fov_deg: float = 90.0
    # --- pipeline use (facts 4.9)
    base_offsets: tuple[int, ...] = (1, 9, 17, 25, 33)  # reference frames = window end - offset
    anchor_frame: int = 4  # the pipeline overwrites the last pick with frame 4 (latent 1)
    first_candidate: int = 1  # frame 0 (the input image) is never a candidate
    chunk_candidates: int = 256  # candidates per batch: 256 x 5000 points ~ 15 MB (results unchanged)
    # --- exact convex variant (facts 4.10)
    exact_near: float = 0.0  # official corners at depth 0 (all coincide with the centre) and far
    exact_min_inradius: float = 1e-9  # x far: an intersection thinner than this counts as empty
    # --- training sampler `select_memory_idx` (facts 4.11)
    sampler_points: int = 10000  # points per centre frame at inference
    sampler_points_train: int = 3000  # ... when is_train
    sampler_radius: float = 30.0  # ball radius around each centre camera
    sampler_radius_train: float = 20.0
    sampler_half_fov_deg: tuple[float, float] = (45.0, 45.0)  # (azimuth, elevation) half-angles
    sampler_chunk: int = 2**20  # frames x points per visibility batch (memory bound only)

    @property
    def num_memory(self) -> int:
        """Memory latents per clip (5 for MG3): one per base frame."""
        return len(self.base_offsets)

    @cached_property
    def intrinsics(self) -> np.ndarray:
        return intrinsics_90fov(self.ref_height, self.ref_width, self.fov_deg)

    @cached_property
    def half_extent(self) -> tuple[float, float]:
        """(W / 2fx, H / 2fy): x/z and y/z at the image border (1, 1 for 90 deg)."""
        fx, fy, _, _ = self.intrinsics
        return self.ref_width / (2 * fx), self.ref_height / (2 * fy)

    @property
    def max_point_distance(self) -> float:
        """Largest distance of a visible point from its camera (frustum far corner): 30 sqrt 3 for MG3."""
        ex, ey = self.half_extent
        return self.far * float(np.sqrt(1.0 + ex * ex + ey * ey))


MG3_RETRIEVAL = RetrievalConfig()


####################################################################################################
# Sampled frustum overlap (facts 4.9)
####################################################################################################


_BLAS_CONTROLLER = None


def single_threaded_blas():
    """Context limiting numpy's BLAS to one thread. The GEMMs here have an inner dimension of 3: a
    second BLAS thread costs more than it saves, and on a shared machine it is several times slower."""
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _BLAS_CONTROLLER = ThreadpoolController()
    return _BLAS_CONTROLLER.limit(limits=1, user_api="blas")


@lru_cache(maxsize=8)
def frustum_points(cfg: RetrievalConfig = MG3_RETRIEVAL) -> np.ndarray:
    """Sample points in camera coordinates -> [n^3, 3] float64 (read-only): (x z W/2fx, y z H/2fy, z)."""
    ex, ey = cfg.half_extent
    xy = np.linspace(-1.0, 1.0, cfg.grid_size)
    z = np.linspace(cfg.near, cfg.far, cfg.grid_size)
    X, Y, Z = np.meshgrid(xy, xy, z, indexing="ij")
    points = np.stack([X * Z * ex, Y * Z * ey, Z], axis=-1).reshape(-1, 3)
    points.flags.writeable = False
    return points


def visible_counts(local_points: np.ndarray, R: np.ndarray, offsets: np.ndarray,
                   cfg: RetrievalConfig = MG3_RETRIEVAL, groups: int = 1) -> np.ndarray:
    """The visibility kernel: how many points each of N cameras sees -> int64 [N, groups].

    local_points [G*P,3] float32: G groups (base frames) of P points, minus an origin o;
    R [N,3,3] float32 c2w rotations; offsets [N,3] float32 = R^T (t - o).
    Camera coordinates p = R^T (X - o) - R^T (t - o). Visible: near < z < far, |x| <= z W/2fx,
    |y| <= z H/2fy.
    NOTE one float32 GEMM [3N,3] x [3,G*P]; every output element is a 3-term dot product, so the
    counts do not depend on how candidates or base frames are batched (tested).
    """
    N = len(R)
    ex, ey = cfg.half_extent
    M = R.transpose(2, 0, 1).reshape(3 * N, 3)  # row (j, n) = column j of R_n; coordinate-major output
    x, y, z = (M @ local_points.T).reshape(3, N, -1)  # each (N, G*P), contiguous
    x -= offsets[:, 0, None]
    y -= offsets[:, 1, None]
    z -= offsets[:, 2, None]
    np.abs(x, out=x)
    np.abs(y, out=y)
    if ex != 1.0:
        x /= np.float32(ex)
    if ey != 1.0:
        y /= np.float32(ey)
    ok = x <= z
    ok &= y <= z
    ok &= z > np.float32(cfg.near)
    ok &= z < np.float32(cfg.far)
    return np.count_nonzero(ok.reshape(N, groups, -1), axis=2)


def base_local_points(base_c2ws: np.ndarray, points: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Each base frame's sample points in world coordinates minus `origin` -> [B*P, 3] float32
    (formed in float64, so precision does not decay far from the world origin)."""
    local = points[None] @ base_c2ws[:, :3, :3].transpose(0, 2, 1) + (base_c2ws[:, None, :3, 3] - origin)
    return local.reshape(-1, 3).astype(np.float32)


def candidate_offsets(R: np.ndarray, t: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """R^T (t - origin) per camera, formed in float64 -> [N,3] float32."""
    return np.einsum("nij,ni->nj", R.astype(np.float64), t - origin).astype(np.float32)


def overlap_counts(base_c2ws: np.ndarray, cand_c2ws: np.ndarray, cfg: RetrievalConfig = MG3_RETRIEVAL,
                   origin: np.ndarray | None = None) -> np.ndarray:
    """Sampled-frustum overlap counts for every (base, candidate) pair -> int64 [B, N] (out of grid^3).

    All base frames and candidates in one batched kernel (candidates chunked to bound memory).
    Coordinates are taken relative to `origin` (default: the first base frame's centre).
    """
    base_c2ws = check_c2ws(base_c2ws, "base_c2ws").astype(np.float64)
    cand_c2ws = check_c2ws(cand_c2ws, "cand_c2ws")
    origin = base_c2ws[0, :3, 3] if origin is None else np.asarray(origin, np.float64)
    local = base_local_points(base_c2ws, frustum_points(cfg), origin)  # (B*P, 3)
    R32 = cand_c2ws[:, :3, :3].astype(np.float32)
    t64 = cand_c2ws[:, :3, 3].astype(np.float64)
    B = len(base_c2ws)
    out = np.zeros((B, len(cand_c2ws)), dtype=np.int64)
    with single_threaded_blas():
        for s in range(0, len(cand_c2ws), cfg.chunk_candidates):
            sl = slice(s, s + cfg.chunk_candidates)
            out[:, sl] = visible_counts(local, R32[sl], candidate_offsets(R32[sl], t64[sl], origin), cfg, B).T
    return out


def overlap_ratios(base_c2ws: np.ndarray, cand_c2ws: np.ndarray,
                   cfg: RetrievalConfig = MG3_RETRIEVAL) -> np.ndarray:
    """Fraction of each base frame's sample points seen by each candidate -> float32 [B, N]."""
    return (overlap_counts(base_c2ws, cand_c2ws, cfg) / np.float32(cfg.grid_size**3)).astype(np.float32)


def select_memory_idx_fov(c2ws: np.ndarray, start: int, base_frames, cfg: RetrievalConfig = MG3_RETRIEVAL
                          ) -> tuple[list[int], list[float]]:
    """`select_memory_idx_fov(..., return_confidence=True, use_gpu=True)` -> (frames, confidences).

    Candidates are frames [first_candidate, start); per base frame the first argmax is returned with
    its float32 ratio. No de-duplication, no threshold. start <= first_candidate -> all zeros.
    """
    c2ws = check_c2ws(c2ws)
    base_frames = [int(b) for b in base_frames]
    if any(not 0 <= b < len(c2ws) for b in base_frames) or start > len(c2ws):
        raise ValueError(f"base frames {base_frames} / start {start} outside the trajectory of "
                         f"{len(c2ws)} frames")
    if start <= cfg.first_candidate:
        return [0] * len(base_frames), [0.0] * len(base_frames)
    ratios = overlap_ratios(c2ws[base_frames], c2ws[cfg.first_candidate:start], cfg)  # (B, N)
    best = ratios.argmax(axis=1)  # first maximum
    picks = [int(j) + cfg.first_candidate for j in best]
    return picks, [float(ratios[b, j]) for b, j in enumerate(best)]


def apply_anchor(picks, cfg: RetrievalConfig = MG3_RETRIEVAL) -> list[int]:
    """The pipeline rule: the last memory slot is always the anchor frame (4, i.e. latent 1)."""
    picks = list(picks)
    if picks:
        picks[-1] = cfg.anchor_frame
    return picks


@dataclass(frozen=True)
class ClipMemory:
    """What the pipeline retrieves for one clip (facts 4.9): per slot, the base frame and the pick."""

    window: ClipWindow
    base_frames: tuple[int, ...]
    raw_frames: tuple[int, ...]  # `select_memory_idx_fov` output
    confidences: tuple[float, ...]
    frames: tuple[int, ...]  # after the anchor rule
    latents: tuple[int, ...]  # memory_latent_idx

    def relative_poses(self, c2ws: np.ndarray, schedule: ClipSchedule = MG3_SCHEDULE) -> np.ndarray:
        """Per slot the relative pose for the memory Plücker map -> [M,4,4] float64."""
        from worldstream.geometry.camera import memory_relative_pose

        return np.stack([memory_relative_pose(c2ws, m, b, schedule)
                         for m, b in zip(self.frames, self.base_frames)])


def select_clip_memory(c2ws: np.ndarray, k: int, schedule: ClipSchedule = MG3_SCHEDULE,
                       cfg: RetrievalConfig = MG3_RETRIEVAL) -> ClipMemory:
    """The pipeline's memory selection for clip k >= 1 on the full trajectory c2ws (frames known upfront)."""
    if k < 1:
        raise ValueError(f"clip 0 has no memory; got k={k}")
    window = schedule.window(k)
    base = window.base_frames(cfg.base_offsets)
    raw, conf = select_memory_idx_fov(c2ws, window.candidate_end, base, cfg)
    frames = apply_anchor(raw, cfg)
    return ClipMemory(window, tuple(base), tuple(raw), tuple(conf), tuple(frames),
                      tuple(int(schedule.latent_of(f)) for f in frames))


####################################################################################################
# Exact convex-frustum intersection (facts 4.10)
####################################################################################################


def frustum_corners(c2w: np.ndarray, cfg: RetrievalConfig = MG3_RETRIEVAL) -> np.ndarray:
    """Camera centre + the 4 image corners back-projected at depths exact_near and far -> [9,3] world."""
    fx, fy, cx, cy = cfg.intrinsics
    W, H = cfg.ref_width, cfg.ref_height
    corners = np.array([[0.0, 0.0], [W, 0.0], [W, H], [0.0, H]])
    pts = [np.zeros(3)]
    for depth in (cfg.exact_near, cfg.far):
        pts += [np.array([(u - cx) / fx * depth, (v - cy) / fy * depth, depth]) for u, v in corners]
    cam = np.stack(pts)
    return cam @ c2w[:3, :3].T + c2w[:3, 3]


def _halfspaces(points: np.ndarray) -> tuple[np.ndarray, float]:
    from scipy.spatial import ConvexHull

    hull = ConvexHull(points)
    return hull.equations, hull.volume  # rows [n, d]: n . x + d <= 0 inside


def exact_overlap_ratio(base_c2w: np.ndarray, cand_c2w: np.ndarray,
                        cfg: RetrievalConfig = MG3_RETRIEVAL) -> float:
    """vol(F_base ∩ F_cand) / vol(F_base) for the two convex frustums (0 if they do not overlap)."""
    from scipy.optimize import linprog
    from scipy.spatial import ConvexHull, HalfspaceIntersection

    eq_b, vol_b = _halfspaces(frustum_corners(base_c2w, cfg))
    eq_c, _ = _halfspaces(frustum_corners(cand_c2w, cfg))
    hs = np.concatenate([eq_b, eq_c])
    # interior point: Chebyshev centre (max r with n.x + r|n| + d <= 0); no overlap if r ~ 0
    norm = np.linalg.norm(hs[:, :3], axis=1, keepdims=True)
    res = linprog(c=[0, 0, 0, -1], A_ub=np.hstack([hs[:, :3], norm]), b_ub=-hs[:, 3],
                  bounds=[(None, None)] * 3 + [(0, None)], method="highs")
    if res.status != 0 or res.x[3] <= cfg.exact_min_inradius * cfg.far:
        return 0.0
    inter = HalfspaceIntersection(hs, res.x[:3])
    return float(ConvexHull(inter.intersections).volume / vol_b)


def select_memory_idx_exact(c2ws: np.ndarray, start: int, base_frames, cfg: RetrievalConfig = MG3_RETRIEVAL,
                            index_mode: Literal["frame", "candidate_position"] = "frame"
                            ) -> tuple[list[int], list[float]]:
    """The official `use_gpu=False` path: argmax of the exact volume ratio over frames [1, start).

    index_mode="frame" returns the real frame index (default); "candidate_position" returns the
    official value, the position in the candidate list (= frame - 1, an off-by-one).
    NOTE one scipy hull intersection per pair: slow (ms per pair), meant for checks, not streaming.
    """
    c2ws = check_c2ws(c2ws)
    if index_mode not in ("frame", "candidate_position"):
        raise ValueError(f"index_mode must be 'frame' or 'candidate_position', got {index_mode!r}")
    base_frames = [int(b) for b in base_frames]
    if start <= cfg.first_candidate:
        return [0] * len(base_frames), [0.0] * len(base_frames)
    picks, confs = [], []
    for b in base_frames:
        ratios = np.array([exact_overlap_ratio(c2ws[b], c2ws[j], cfg)
                           for j in range(cfg.first_candidate, start)])
        j = int(ratios.argmax())
        picks.append(j if index_mode == "candidate_position" else j + cfg.first_candidate)
        confs.append(float(ratios[j]))
    return picks, confs


####################################################################################################
# Training sampler (facts 4.11)
####################################################################################################


def _sampler_tangents(cfg: RetrievalConfig) -> tuple[float, float]:
    """tan of the sampler's (azimuth, elevation) half-angles (1 - 1e-16 for MG3's 45 degrees)."""
    ta, te = (np.tan(np.deg2rad(a)) for a in cfg.sampler_half_fov_deg)
    return ta, te


def _visible_block(px: np.ndarray, py: np.ndarray, pz: np.ndarray, R: np.ndarray, t: np.ndarray,
                   ta: float, te: float) -> np.ndarray:
    """FOV test of points (coordinate arrays [P] float64) in cameras R [n,3,3], t [n,3] -> [n, P] bool.

    NOTE bit-exact with the einsum formulation R^T (X - t) of the official code: each camera coordinate
    is (R_0i d_0 + R_1i d_1) + R_2i d_2 with d = X - t, the order numpy's einsum sums in (no FMA;
    tested), but on contiguous [n, P] planes instead of an [n, P, 3] array (~7x faster).
    """
    d = [p[None] - t[:, j, None] for j, p in enumerate((px, py, pz))]  # 3 x [n, P]

    def coord(i: int) -> np.ndarray:
        return (R[:, 0, i, None] * d[0] + R[:, 1, i, None] * d[1]) + R[:, 2, i, None] * d[2]

    z = coord(2)
    ok = z > 0
    x = np.abs(coord(0))
    ok &= x <= ta * z
    y = np.abs(coord(1))
    ok &= y <= te * z
    return ok


def fov_visible(points: np.ndarray, c2ws: np.ndarray, cfg: RetrievalConfig = MG3_RETRIEVAL) -> np.ndarray:
    """[N, P] bool: point in front (z > 0) with |azimuth| = atan(|x|/z) and |elevation| = atan(|y|/z)
    within the sampler's half-angles (a 90x90 deg pyramid for MG3's 45/45). float64 arithmetic."""
    ta, te = _sampler_tangents(cfg)
    px, py, pz = (np.ascontiguousarray(points[:, j], dtype=np.float64) for j in range(3))
    R, t = c2ws[:, :3, :3].astype(np.float64), c2ws[:, :3, 3].astype(np.float64)
    out = np.zeros((len(c2ws), len(points)), dtype=bool)
    step = max(1, cfg.sampler_chunk // max(len(points), 1))
    for s in range(0, len(c2ws), step):  # frames in batches: a few [step, P] float64 planes (~8 MB each)
        out[s:s + step] = _visible_block(px, py, pz, R[s:s + step], t[s:s + step], ta, te)
    return out


def fov_visible_any(points: np.ndarray, c2ws: np.ndarray, cfg: RetrievalConfig = MG3_RETRIEVAL,
                    frames_per_pass: int = 8) -> np.ndarray:
    """[P] bool: seen by at least one of the cameras (= `fov_visible(...).any(axis=0)`, exactly).

    Cameras in passes of `frames_per_pass`; each pass tests only the points no earlier camera saw, so
    neighbouring frames of a chunk (which see nearly the same points) cost little.
    """
    ta, te = _sampler_tangents(cfg)
    R, t = c2ws[:, :3, :3].astype(np.float64), c2ws[:, :3, 3].astype(np.float64)
    seen = np.zeros(len(points), dtype=bool)
    todo = np.arange(len(points))
    step = max(1, min(frames_per_pass, cfg.sampler_chunk // max(len(points), 1)))
    for s in range(0, len(c2ws), step):
        if len(todo) == 0:
            break
        p = points[todo]
        px, py, pz = (np.ascontiguousarray(p[:, j], dtype=np.float64) for j in range(3))
        hit = _visible_block(px, py, pz, R[s:s + step], t[s:s + step], ta, te).any(axis=0)
        seen[todo[hit]] = True
        todo = todo[~hit]
    return seen


def sampler_points(c2ws: np.ndarray, centres: list[int], rng: np.random.Generator, is_train: bool,
                   cfg: RetrievalConfig = MG3_RETRIEVAL) -> np.ndarray:
    """Points uniform in a ball around each centre camera -> [len(centres) * n, 3] float64 (facts 4.11).

    Draws, in this order: standard normals [C, n, 3] (directions), uniforms [C, n, 1] (radius^3).
    """
    n = cfg.sampler_points_train if is_train else cfg.sampler_points
    radius = cfg.sampler_radius_train if is_train else cfg.sampler_radius
    dirs = rng.standard_normal((len(centres), n, 3))
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    r = radius * rng.random((len(centres), n, 1)) ** (1.0 / 3.0)
    return (c2ws[centres, None, :3, 3] + dirs * r).reshape(-1, 3)


def select_memory_idx(c2ws: np.ndarray, chunk_start: int, chunk_end: int, memory_end_idx: int,
                      memory_num: int, rng: np.random.Generator, is_train: bool = True,
                      schedule: ClipSchedule = MG3_SCHEDULE,
                      cfg: RetrievalConfig = MG3_RETRIEVAL) -> list[int]:
    """Multi-centre FOV-overlap sampler -> `memory_num` block-start frames (facts 4.11).

    1. Points: uniform in a ball (radius 30, 20 when training) around each of the chunk's centre frames
       chunk_end - base_offsets (10000 / 3000 points each).
    2. Chunk visibility = union over every chunk frame [chunk_start, chunk_end) of the FOV test.
    3. Candidates = block starts 1, 5, 9, ... < memory_end_idx; overlap = |chunk ∩ cand| / |chunk|.
    4. Greedy: best unmasked candidate (first maximum); if its overlap <= 0 the most recent unmasked
       candidate instead; mask its 4-frame block (frame 0 pre-masked).
    Requires memory_end_idx % stride == 1 and memory_end_idx >= memory_num * stride, else all zeros.
    NOTE speed (ours, same picks for the same rng state: every visibility bit equals the official
    formulation's): the union stops testing a point once a chunk frame sees it, and candidates are
    tested only on the chunk-visible points (the others cannot enter |chunk ∩ cand|).
    """
    c2ws = check_c2ws(c2ws)
    stride = schedule.temporal_stride
    if memory_end_idx % stride != 1 % stride or memory_end_idx < memory_num * stride:
        return [0] * memory_num
    if not 0 <= chunk_start < chunk_end <= len(c2ws) or memory_end_idx > len(c2ws):
        raise ValueError(f"chunk [{chunk_start}, {chunk_end}) / memory_end_idx {memory_end_idx} outside the "
                         f"trajectory of {len(c2ws)} frames")
    # 1. points
    centres = [chunk_end - o for o in cfg.base_offsets if chunk_start <= chunk_end - o]
    points = sampler_points(c2ws, centres, rng, is_train, cfg)
    # 2.-3. visibility and overlap
    chunk_vis = fov_visible_any(points, c2ws[chunk_start:chunk_end], cfg)
    cands = np.arange(1, memory_end_idx, stride)
    cand_vis = fov_visible(points[chunk_vis], c2ws[cands], cfg)  # [N, |chunk|]
    overlap = cand_vis.sum(axis=1) / max(int(chunk_vis.sum()), 1)
    # 4. greedy selection with block masking
    masked = np.zeros(memory_end_idx, dtype=bool)
    masked[0] = True
    selected = []
    for _ in range(memory_num):
        free = ~masked[cands]
        if not free.any():
            break
        score = np.where(free, overlap, -np.inf)
        j = int(score.argmax())
        if score[j] <= 0:
            j = int(np.flatnonzero(free)[-1])
        selected.append(int(cands[j]))
        masked[cands[j]:cands[j] + stride] = True
    return selected + [0] * (memory_num - len(selected))
