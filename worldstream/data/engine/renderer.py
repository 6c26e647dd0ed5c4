"""Headless OpenGL renderer for procedural worlds (moderngl, EGL: Mesa llvmpipe on CPU, a GPU if present).

Notable:
* Cameras are MG3 c2w matrices [T,4,4] (worldstream.geometry.camera.extrinsics_from_poses): world
  Unreal-style (X forward, Y right, Z up, metres), camera OpenCV (x right, y down, z forward). We render
  with view = inverse(c2w) directly, so the reflection inside MG3's c2w needs no special casing, and
  a pinhole projection built from OpenCV intrinsics.
* Intrinsics: square pixels, 90 degree *horizontal* FOV: fx = fy = W/2, cx = W/2, cy = H/2
  (`intrinsics(H, W)`). NOTE MG3's own get_intrinsics uses fy = H/2 (90 degrees on both axes,
  non-square pixels); our frames are real pinhole renders, so we keep square pixels and report them.
* The projection maps image row v to NDC y = 2v/H - 1 (GL's bottom row = image top row), so the
  frame comes out of glReadPixels already top-first: no flip, no copy.
* Speed: one indexed vertex buffer for the whole world, split into spatial chunks (contiguous
  index ranges); per frame only chunks intersecting the view frustum are drawn (a few draw calls;
  llvmpipe is vertex-bound on these small frames, so culling pays). Frames are rendered in
  batches into a tall framebuffer (one viewport per frame) and read back with a single
  glReadPixels per batch. The GL context is created once per process and reused.
* Shading: texture array (mipmapped), hemispheric ambient + one directional light, emissive
  texels (lit windows, neon), exponential distance fog; the sky is a full-screen pass at the far
  plane, drawn after the world so only uncovered pixels compute their view ray (gradient, sun
  glow and disc, stars at night).
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np

from worldstream.data.engine.mesh import VERTEX_ATTRIBUTES, VERTEX_FORMAT
from worldstream.data.engine.world import World

NEAR = 0.05  # metres
FAR = 600.0  # beyond the distant scenery ring
EMIT_GAIN = 1.25  # emissive texels are this bright relative to their albedo
CHUNK_GRID = 4  # the arena is split into CHUNK_GRID^2 cells for frustum culling ...
CHUNK_SECTORS = 8  # ... and the outside into this many angular sectors
HUGE_TRIANGLE = 100.0  # metres: triangles wider than this (the ground) are always drawn
MAX_FBO_HEIGHT = 8192  # tall batch framebuffer limit (GL_MAX_RENDERBUFFER_SIZE is >= 8192 on Mesa/NVIDIA)

_WORLD_VS = """
#version 330
uniform mat4 mvp;
in vec3 in_pos; in vec3 in_normal; in vec3 in_color; in vec2 in_uv; in float in_layer; in float in_emit;
out vec3 v_pos; out vec3 v_normal; out vec3 v_color; out vec2 v_uv; flat out float v_layer; out float v_emit;
void main() {
    gl_Position = mvp * vec4(in_pos, 1.0);
    v_pos = in_pos; v_normal = in_normal; v_color = in_color;
    v_uv = in_uv; v_layer = in_layer; v_emit = in_emit;
}
"""

_WORLD_FS = """
#version 330
uniform sampler2DArray tex;
uniform vec3 cam_pos;
uniform vec3 sun_dir; uniform vec3 sun_color; uniform vec3 amb_sky; uniform vec3 amb_ground;
uniform vec3 fog_color; uniform float fog_density; uniform float emit_gain;
in vec3 v_pos; in vec3 v_normal; in vec3 v_color; in vec2 v_uv; flat in float v_layer; in float v_emit;
out vec4 f_color;
void main() {
    vec4 t = texture(tex, vec3(v_uv, v_layer));
    vec3 albedo = v_color * t.rgb;
    vec3 n = normalize(v_normal);
    float diffuse = max(dot(n, sun_dir), 0.0);
    vec3 ambient = mix(amb_ground, amb_sky, 0.5 + 0.5 * n.z);
    vec3 lit = albedo * (ambient + sun_color * diffuse);
    float e = v_emit * t.a;
    vec3 col = mix(lit, albedo * emit_gain, e);
    float dist = length(v_pos - cam_pos);
    float f = exp(-fog_density * dist * (1.0 - 0.6 * e));   // glowing things shine through the haze
    f_color = vec4(mix(fog_color, col, f), 1.0);
}
"""

_SKY_VS = """
#version 330
uniform vec4 intr;  // fx, fy, cx, cy
uniform vec2 size;  // W, H
in vec2 in_ndc;
out vec3 v_ray;
void main() {
    gl_Position = vec4(in_ndc, 1.0, 1.0);  // far plane: drawn after the world, depth-tested
    vec2 uv = (in_ndc + 1.0) * 0.5 * size;   // image pixel coords (v down, matching the projection)
    v_ray = vec3((uv.x - intr.z) / intr.x, (uv.y - intr.w) / intr.y, 1.0);
}
"""

_SKY_FS = """
#version 330
uniform mat3 rot;  // camera -> world rotation (c2w[:3,:3])
uniform vec3 zenith; uniform vec3 horizon; uniform vec3 fog_color;
uniform vec3 sun_dir; uniform vec3 sun_color; uniform float sun_disc; uniform float stars;
in vec3 v_ray;
out vec4 f_color;
float hash(vec3 p) { return fract(sin(dot(p, vec3(12.9898, 78.233, 37.719))) * 43758.5453); }
void main() {
    vec3 d = normalize(rot * v_ray);
    float el = d.z;
    vec3 col = mix(horizon, zenith, pow(clamp(el, 0.0, 1.0), 0.55));
    col = mix(fog_color, col, smoothstep(-0.02, 0.06, el));
    float s = max(dot(d, sun_dir), 0.0);
    col += sun_color * (0.22 * pow(s, 6.0) + 0.35 * pow(s, 60.0));
    col += sun_disc * sun_color * smoothstep(0.9988, 0.9993, s);
    if (stars > 0.0) {
        float h = hash(floor(d * 160.0));
        float twinkle = 0.4 + 0.6 * fract(h * 97.0);
        col += stars * step(0.9965, h) * smoothstep(0.05, 0.25, el) * vec3(0.9, 0.9, 1.0) * twinkle;
    }
    f_color = vec4(col, 1.0);
}
"""

# NOTE an EGL context is current in one thread only: a context created in a worker thread (the play
# server renders start images in an executor) cannot be used from another. State is per thread.
_GL = threading.local()  # .ctx, .programs
_CONTEXT_PID = None  # pid that created GL contexts (fork detection)


def get_context():
    """This thread's headless GL context (EGL), created on first use.

    NOTE GL drivers do not survive fork(): a child forked after its parent rendered hangs in its
    first draw (measured with Mesa llvmpipe). We raise instead; render in processes started with
    multiprocessing "spawn", or fork before the parent renders anything.
    """
    global _CONTEXT_PID
    if _CONTEXT_PID is not None and _CONTEXT_PID != os.getpid():
        raise RuntimeError(
            "this process was forked after its parent created an OpenGL context; GL drivers do not "
            "survive fork(). Start render workers with multiprocessing.get_context('spawn'), or fork "
            "before rendering anything in the parent."
        )
    if getattr(_GL, "ctx", None) is None:
        import moderngl

        try:
            _GL.ctx = moderngl.create_standalone_context(backend="egl")
        except Exception as e:  # no EGL: explain what is needed instead of a bare driver error
            raise RuntimeError(
                "could not create a headless OpenGL 3.3 context with EGL (moderngl backend='egl'); "
                "install Mesa's EGL (e.g. apt-get install libegl1 libgl1-mesa-dri) or run on a GPU host. "
                f"Driver error: {e}"
            ) from e
        _CONTEXT_PID = os.getpid()
        _GL.programs = {}
    return _GL.ctx


def _programs(ctx):
    programs = _GL.__dict__.setdefault("programs", {})
    if id(ctx) not in programs:
        programs[id(ctx)] = (ctx.program(vertex_shader=_WORLD_VS, fragment_shader=_WORLD_FS),
                             ctx.program(vertex_shader=_SKY_VS, fragment_shader=_SKY_FS))
    return programs[id(ctx)]


def check_size(height, width) -> tuple[int, int]:
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if height > MAX_FBO_HEIGHT or width > MAX_FBO_HEIGHT:
        raise ValueError(f"frame size {height}x{width} exceeds the renderer limit {MAX_FBO_HEIGHT}")
    return int(height), int(width)


def intrinsics(height: int, width: int) -> np.ndarray:
    """[fx, fy, cx, cy] float64: square pixels, 90 degree horizontal FOV."""
    height, width = check_size(height, width)
    return np.array([width / 2.0, width / 2.0, width / 2.0, height / 2.0], dtype=np.float64)


def projection(intr: np.ndarray, height: int, width: int, near: float = NEAR, far: float = FAR) -> np.ndarray:
    """OpenCV camera coords -> GL clip coords [4,4]; image row 0 maps to NDC y = -1 (see module doc)."""
    fx, fy, cx, cy = (float(v) for v in intr)
    P = np.zeros((4, 4), dtype=np.float64)
    P[0, 0], P[0, 2] = 2 * fx / width, 2 * cx / width - 1
    P[1, 1], P[1, 2] = 2 * fy / height, 2 * cy / height - 1
    P[2, 2], P[2, 3] = (far + near) / (far - near), -2 * far * near / (far - near)
    P[3, 2] = 1.0
    return P


def chunk_geometry(
    vertices: np.ndarray, arena_half: float, grid: int = CHUNK_GRID, sectors: int = CHUNK_SECTORS
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Triangle soup -> (unique vertices [V,13], indices [N] uint32, ranges [C,2], AABBs [C,2,3]).

    Triangles are grouped into chunks by centroid: chunk 0 holds huge triangles (the ground plane),
    then a grid x grid tiling of the arena, then `sectors` angular sectors outside it (boundary
    walls, outer trees, distant scenery). Each chunk is a contiguous index range, so the renderer
    can skip chunks outside the view frustum. Identical vertices are shared (indexed drawing lets
    the vertex cache shade each once).
    """
    tris = vertices.reshape(-1, 3, vertices.shape[1])
    pos = tris[:, :, :3].astype(np.float64)  # [n,3,3]
    cen = pos.mean(axis=1)
    extent = (pos.max(axis=1) - pos.min(axis=1))[:, :2].max(axis=1)
    inside = (np.abs(cen[:, 0]) <= arena_half) & (np.abs(cen[:, 1]) <= arena_half)
    cell = np.clip(((cen[:, :2] + arena_half) / (2 * arena_half) * grid).astype(int), 0, grid - 1)
    sector = ((np.arctan2(cen[:, 1], cen[:, 0]) + np.pi) / (2 * np.pi) * sectors).astype(int) % sectors
    chunk = np.where(inside, 1 + cell[:, 0] * grid + cell[:, 1], 1 + grid * grid + sector)
    chunk = np.where(extent > HUGE_TRIANGLE, 0, chunk)
    order = np.argsort(chunk, kind="stable")
    chunk, tris, pos = chunk[order], tris[order], pos[order]
    n_chunks = 1 + grid * grid + sectors
    counts = np.bincount(chunk, minlength=n_chunks)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ranges = np.stack([starts * 3, counts * 3], axis=1)  # in indices
    aabb = np.zeros((n_chunks, 2, 3))
    for c in np.flatnonzero(counts):
        p = pos[starts[c] : starts[c] + counts[c]].reshape(-1, 3)
        aabb[c] = p.min(axis=0), p.max(axis=0)
    flat = np.ascontiguousarray(tris.reshape(-1, vertices.shape[1]), dtype=np.float32)
    rows = flat.view(np.dtype((np.void, flat.dtype.itemsize * flat.shape[1]))).ravel()
    _, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
    rank = np.empty_like(first)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))  # keep first-use order
    unique = flat[np.sort(first)]
    indices = rank[inverse.ravel()].astype(np.uint32)
    keep = counts > 0
    return unique, indices, ranges[keep], aabb[keep]


def visible_chunks(mvp: np.ndarray, aabb: np.ndarray) -> np.ndarray:
    """Conservative frustum test: mvp [T,4,4], AABBs [C,2,3] -> visible [T,C] bool.

    A box is culled when all 8 corners lie outside the same clip plane (valid in homogeneous
    coordinates, also for corners behind the camera)."""
    sel = np.array([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)])  # [8,3] corner choice
    corners = np.where(sel[None].astype(bool), aabb[:, None, 1], aabb[:, None, 0])  # [C,8,3]
    hom = np.concatenate([corners, np.ones(corners.shape[:2] + (1,))], axis=-1)  # [C,8,4]
    clip = np.einsum("tij,ckj->tcki", mvp, hom)  # [T,C,8,4]
    x, y, z, w = clip[..., 0], clip[..., 1], clip[..., 2], clip[..., 3]
    out = (x < -w).all(-1) | (x > w).all(-1) | (y < -w).all(-1) | (y > w).all(-1)
    out |= (z < -w).all(-1) | (z > w).all(-1)
    return ~out


def _runs(mask: np.ndarray, ranges: np.ndarray) -> list[tuple[int, int]]:
    """Merge consecutive visible chunks into (first index, count) draw calls."""
    runs: list[tuple[int, int]] = []
    for c in np.flatnonzero(mask):
        first, count = int(ranges[c, 0]), int(ranges[c, 1])
        if runs and runs[-1][0] + runs[-1][1] == first:
            runs[-1] = (runs[-1][0], runs[-1][1] + count)
        else:
            runs.append((first, count))
    return runs


def _check_c2w(c2w) -> np.ndarray:
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4):
        raise ValueError(f"c2w must be [T, 4, 4], got {list(c2w.shape)}")
    if not np.isfinite(c2w).all():
        raise ValueError("c2w has NaN/inf values")
    return c2w


class Renderer:
    """GPU-side copy of one World plus a batch framebuffer of H x W frames.

    `render(c2w [T,4,4]) -> uint8 [T,H,W,3]`. Reuse one Renderer for every clip of a world.
    """

    def __init__(
        self, world: World, height: int, width: int, batch: int = 32, samples: int = 0, ctx=None
    ) -> None:
        import moderngl

        self.height, self.width = check_size(height, width)
        if isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        if samples not in (0, 2, 4, 8):
            raise ValueError(f"samples (MSAA) must be 0, 2, 4 or 8, got {samples!r}")
        self.world = world
        self.ctx = ctx or get_context()
        self.batch = max(1, min(batch, MAX_FBO_HEIGHT // self.height))
        self.intrinsics = intrinsics(self.height, self.width)
        self._proj = projection(self.intrinsics, self.height, self.width)
        self.prog, self.sky = _programs(self.ctx)
        ctx = self.ctx
        # 1. world geometry: one indexed VBO, one VAO; chunks for frustum culling
        verts, indices, self._ranges, self._aabb = chunk_geometry(world.vertices, world.cfg.arena_size / 2)
        self._vbo = ctx.buffer(verts.tobytes())
        self._ibo = ctx.buffer(indices.tobytes())
        self._vao = ctx.vertex_array(
            self.prog,
            [(self._vbo, VERTEX_FORMAT, *VERTEX_ATTRIBUTES)],
            index_buffer=self._ibo,
            index_element_size=4,
        )
        # 2. full-screen triangle for the sky
        tri = np.array([[-1, -1], [3, -1], [-1, 3]], dtype=np.float32)
        self._sky_vbo = ctx.buffer(tri.tobytes())
        self._sky_vao = ctx.vertex_array(self.sky, [(self._sky_vbo, "2f", "in_ndc")])
        # 3. texture array, trilinear mipmaps
        L, S = world.textures.shape[0], world.textures.shape[1]
        self._tex = ctx.texture_array((S, S, L), 4, np.ascontiguousarray(world.textures).tobytes())
        self._tex.build_mipmaps()
        self._tex.filter = (moderngl.LINEAR_MIPMAP_LINEAR, moderngl.LINEAR)
        self._tex.repeat_x = self._tex.repeat_y = True
        # 4. tall batch framebuffer: frame i lives in rows [i*H, (i+1)*H)
        #    (with MSAA: render into a multisampled buffer, resolve into a plain one for readback)
        fb_size = (self.width, self.height * self.batch)
        self.samples = min(samples, ctx.max_samples)
        self._color = ctx.renderbuffer(fb_size, components=4, samples=self.samples)
        self._depth = ctx.depth_renderbuffer(fb_size, samples=self.samples)
        self._fbo = ctx.framebuffer(color_attachments=[self._color], depth_attachment=self._depth)
        self._resolve_color = ctx.renderbuffer(fb_size, components=4) if self.samples else None
        self._resolve = (
            ctx.framebuffer(color_attachments=[self._resolve_color]) if self.samples else self._fbo
        )

    def _set_static_uniforms(self) -> None:
        lt = self.world.lighting
        p, s = self.prog, self.sky
        p["sun_dir"].value = lt.sun_dir
        p["sun_color"].value = lt.sun_color
        p["amb_sky"].value = lt.ambient_sky
        p["amb_ground"].value = lt.ambient_ground
        p["fog_color"].value = lt.fog_color
        p["fog_density"].value = lt.fog_density
        p["emit_gain"].value = EMIT_GAIN
        p["tex"].value = 0
        s["intr"].value = tuple(float(v) for v in self.intrinsics)
        s["size"].value = (float(self.width), float(self.height))
        s["zenith"].value = lt.sky_zenith
        s["horizon"].value = lt.sky_horizon
        s["fog_color"].value = lt.fog_color
        s["sun_dir"].value = lt.sun_dir
        s["sun_color"].value = lt.sun_color
        s["sun_disc"].value = lt.sun_disc
        s["stars"].value = lt.stars

    def render(self, c2w) -> np.ndarray:
        """c2w [T,4,4] (MG3 convention, metres) -> frames uint8 [T,H,W,3]."""
        import moderngl

        c2w = _check_c2w(c2w)
        T, H, W = c2w.shape[0], self.height, self.width
        out = np.empty((T, H, W, 3), dtype=np.uint8)
        if T == 0:
            return out
        # 1. per-frame matrices, all at once in float64
        w2c = np.linalg.inv(c2w)  # [T,4,4]
        mvp64 = np.einsum("ij,tjk->tik", self._proj, w2c)  # [T,4,4]
        mvp_bytes = np.ascontiguousarray(mvp64.transpose(0, 2, 1).astype(np.float32))  # GL: column-major
        visible = visible_chunks(mvp64, self._aabb)  # [T,C]
        rot_bytes = np.ascontiguousarray(c2w[:, :3, :3].transpose(0, 2, 1).astype(np.float32))
        cam_pos = c2w[:, :3, 3].astype(np.float32)
        # 2. GL state
        ctx = self.ctx
        self._fbo.use()
        self._tex.use(0)
        self._set_static_uniforms()
        u_mvp, u_cam, u_rot = self.prog["mvp"], self.prog["cam_pos"], self.sky["rot"]
        ctx.front_face = "ccw"
        # 3. batches: one viewport per frame, one readback per batch
        for start in range(0, T, self.batch):
            n = min(self.batch, T - start)
            self._fbo.depth_mask = True
            self._fbo.clear(depth=1.0)
            # 3a. world (depth-tested, back faces culled)
            ctx.enable(moderngl.DEPTH_TEST | moderngl.CULL_FACE)
            ctx.depth_func = "<"
            for k in range(n):
                t = start + k
                self._fbo.viewport = (0, k * H, W, H)
                u_mvp.write(mvp_bytes[t].tobytes())
                u_cam.value = tuple(cam_pos[t])
                for first, count in _runs(visible[t], self._ranges):
                    self._vao.render(moderngl.TRIANGLES, vertices=count, first=first)
            # 3b. sky last, at depth 1.0: only pixels no geometry covered get shaded
            ctx.disable(moderngl.CULL_FACE)
            ctx.depth_func = "<="
            self._fbo.depth_mask = False
            for k in range(n):
                self._fbo.viewport = (0, k * H, W, H)
                u_rot.write(rot_bytes[start + k].tobytes())
                self._sky_vao.render(moderngl.TRIANGLES)
            if self.samples:
                ctx.copy_framebuffer(self._resolve, self._fbo)
            data = self._resolve.read(viewport=(0, 0, W, H * n), components=3, alignment=1)
            out[start : start + n] = np.frombuffer(data, dtype=np.uint8).reshape(n, H, W, 3)
        return out

    def release(self) -> None:
        objs = [
            self._vao,
            self._vbo,
            self._ibo,
            self._sky_vao,
            self._sky_vbo,
            self._tex,
            self._fbo,
            self._color,
            self._depth,
        ]
        if self.samples:
            objs += [self._resolve, self._resolve_color]
        for obj in objs:
            obj.release()


# ---- module-level conveniences -------------------------------------------------------------

_CACHED = threading.local()  # per thread, like the GL context it renders with


def cached_renderer(world: World, height: int, width: int) -> Renderer:
    """One live Renderer per thread (the last world/size used); replaced when either changes."""
    c = _CACHED.__dict__
    if c.get("pid") != os.getpid():  # NOTE after a fork the parent's GL objects are unusable: drop them
        c.update(world=None, size=None, renderer=None, pid=os.getpid())
    if c["world"] is not world or c["size"] != (height, width):
        if c["renderer"] is not None:
            c["renderer"].release()
        c.update(world=None, size=None, renderer=None)
        r = Renderer(world, height, width)
        c.update(world=world, size=(height, width), renderer=r)
    return c["renderer"]


def render_frames(world: World, c2w, height: int, width: int) -> np.ndarray:
    """Render MG3 c2w [T,4,4] of `world` -> uint8 [T,H,W,3] (renderer cached per process)."""
    if not isinstance(world, World):
        raise ValueError(f"world must be a World, got {type(world).__name__}")
    height, width = check_size(height, width)
    return cached_renderer(world, height, width).render(c2w)


def measure_fps(world_seed: int, height: int, width: int, n: int, details: bool = False, samples: int = 0):
    """Renderer throughput on a full world: frames/s for `n` frames of an exploration path.

    Returns the fps (float), or with details=True a dict (fps, seconds, frames, size, triangles,
    biome, gl_renderer). World generation and the first (warm-up) batch are not timed.
    """
    from worldstream.data.engine.agents import plan_trajectory
    from worldstream.geometry.camera import extrinsics_from_poses

    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive int, got {n!r}")
    world = World.generate(world_seed)
    traj = plan_trajectory(world, "explore", n, seed=world_seed)
    c2w = extrinsics_from_poses(traj.poses)
    r = Renderer(world, height, width, samples=samples)
    try:
        r.render(c2w[: r.batch])  # warm-up: shader JIT, texture upload
        t0 = time.perf_counter()
        r.render(c2w)
        dt = time.perf_counter() - t0
    finally:
        r.release()
    fps = n / dt
    if not details:
        return fps
    return {
        "fps": fps,
        "seconds": dt,
        "frames": n,
        "height": height,
        "width": width,
        "msaa": r.samples,
        "triangles": world.num_triangles,
        "biome": world.biome,
        "gl_renderer": get_context().info.get("GL_RENDERER", "?"),
    }
