"""Procedural 3D objects rendered from any azimuth and elevation: multi-view data that runs on a CPU.

Each object is a convex polyhedron (``SHAPES``: cube, box, tetrahedron, octahedron, prism, pyramid) with its own
colour per face, random proportions and a random orientation, centred at the origin. :func:`render` rasterises it
in numpy: a perspective camera on an orbit (azimuth about the vertical axis, elevation above the horizon,
distance ``CAMERA_DISTANCE``) looking at the origin, a z-buffer over the triangles, flat Lambert shading from a
light fixed to the world, on a light-grey background. Rendering is deterministic: the same object and camera give
the same pixels, and the views of one object agree with each other as a real object's would (what a multi-view
model must learn), which is what the tests of ``stiv_jax.data.multiview`` check.
"""
from __future__ import annotations

import dataclasses

import numpy as np

SHAPES = ("cube", "box", "tetrahedron", "octahedron", "prism", "pyramid")
PALETTE = ((230, 60, 50), (60, 170, 70), (60, 100, 230), (240, 200, 40), (200, 70, 200), (40, 200, 210),
           (250, 140, 30), (150, 90, 50))
BACKGROUND = (235, 235, 235)
CAMERA_DISTANCE = 3.2        # object radius 1: it fills most of the frame
FOCAL = 2.6                  # focal length in units of the half frame
LIGHT = np.array([0.4, 0.8, 0.45]) / np.linalg.norm([0.4, 0.8, 0.45])   # world-space light direction


@dataclasses.dataclass(frozen=True)
class Polyhedron:
    """A convex object: ``vertices`` float ``[v, 3]``, ``faces`` (vertex index tuples, counter-clockwise seen
    from outside), one RGB colour per face."""

    name: str
    vertices: np.ndarray
    faces: tuple[tuple[int, ...], ...]
    colours: tuple[tuple[int, int, int], ...]

    def triangles(self) -> tuple[np.ndarray, np.ndarray]:
        """``(corners float [n, 3, 3], colours float [n, 3])``: every face fanned into triangles."""
        tris, cols = [], []
        for face, colour in zip(self.faces, self.colours):
            for i in range(1, len(face) - 1):
                tris.append(self.vertices[[face[0], face[i], face[i + 1]]])
                cols.append(colour)
        return np.asarray(tris, np.float64), np.asarray(cols, np.float64)


def _base_shape(name: str) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    if name in ("cube", "box"):
        v = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], np.float64)
        faces = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    elif name == "tetrahedron":
        v = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], np.float64)
        faces = [(0, 1, 2), (0, 3, 1), (0, 2, 3), (1, 3, 2)]
    elif name == "octahedron":
        v = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], np.float64)
        faces = [(0, 2, 4), (2, 1, 4), (1, 3, 4), (3, 0, 4), (2, 0, 5), (1, 2, 5), (3, 1, 5), (0, 3, 5)]
    elif name == "prism":
        a = np.deg2rad([90, 210, 330])
        v = np.array([[np.cos(t), y, np.sin(t)] for y in (-1, 1) for t in a], np.float64)
        faces = [(0, 1, 2), (3, 5, 4), (0, 3, 4, 1), (1, 4, 5, 2), (2, 5, 3, 0)]
    elif name == "pyramid":
        v = np.array([[-1, -1, -1], [1, -1, -1], [1, -1, 1], [-1, -1, 1], [0, 1, 0]], np.float64)
        faces = [(0, 1, 2, 3), (0, 4, 1), (1, 4, 2), (2, 4, 3), (3, 4, 0)]
    else:
        raise ValueError(f"shape {name!r}; valid: {', '.join(SHAPES)}")
    return v, [_outward(v, f) for f in faces]


def _outward(vertices: np.ndarray, face: tuple[int, ...]) -> tuple[int, ...]:
    """``face`` ordered counter-clockwise seen from outside (the normal points away from the centroid)."""
    p = vertices[list(face)]
    normal = np.cross(p[1] - p[0], p[2] - p[0])
    return tuple(face) if normal @ (p.mean(0) - vertices.mean(0)) > 0 else tuple(reversed(face))


def random_object(rng: np.random.Generator) -> Polyhedron:
    """A random shape of ``SHAPES`` with random proportions (``box`` most), orientation and face colours."""
    name = SHAPES[int(rng.integers(len(SHAPES)))]
    vertices, faces = _base_shape(name)
    scale = rng.uniform(0.55, 1.0, 3) if name == "box" else np.full(3, rng.uniform(0.7, 0.9))
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    rotation = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                         [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                         [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])
    vertices = (vertices * scale) @ rotation.T
    vertices /= np.linalg.norm(vertices, axis=1).max()          # bounding radius 1
    colours = tuple(PALETTE[int(i)] for i in rng.choice(len(PALETTE), size=len(faces), replace=len(faces) > 8))
    return Polyhedron(name=name, vertices=vertices, faces=tuple(faces), colours=colours)


def camera(azimuth: float, elevation: float) -> tuple[np.ndarray, np.ndarray]:
    """``(position [3], rotation [3, 3])`` of the orbit camera (degrees; y is up, azimuth 0 looks along -z);
    the rotation's rows are the camera's right, up and forward axes in world coordinates."""
    az, el = np.deg2rad(azimuth), np.deg2rad(elevation)
    position = CAMERA_DISTANCE * np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)])
    forward = -position / np.linalg.norm(position)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    return position, np.stack([right, np.cross(right, forward), forward])


def render(obj: Polyhedron, *, azimuth: float, elevation: float, size: int) -> np.ndarray:
    """uint8 ``[size, size, 3]``: ``obj`` seen from the orbit camera at ``azimuth``, ``elevation`` (degrees)."""
    if not -89.0 <= elevation <= 89.0:
        raise ValueError(f"elevation {elevation} must lie in [-89, 89] degrees")
    position, rotation = camera(azimuth, elevation)
    tris, colours = obj.triangles()
    normals = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    shade = 0.5 + 0.5 * np.clip(normals @ LIGHT, 0.0, 1.0)
    cam = (tris - position) @ rotation.T                        # [n, 3, 3]: right, up, depth
    screen = FOCAL * cam[..., :2] / cam[..., 2:3]                # [-1, 1] spans the frame
    px = (screen[..., 0] + 1) * size / 2
    py = (1 - screen[..., 1]) * size / 2
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    image = np.broadcast_to(np.asarray(BACKGROUND, np.float64), (size, size, 3)).copy()
    depth = np.full((size, size), np.inf)
    for i in range(len(tris)):
        if normals[i] @ (position - tris[i].mean(0)) <= 0:       # back face
            continue
        (x0, x1, x2), (y0, y1, y2) = px[i], py[i]
        area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        if abs(area) < 1e-9:
            continue
        w1 = ((xs - x0) * (y2 - y0) - (x2 - x0) * (ys - y0)) / area
        w2 = ((x1 - x0) * (ys - y0) - (xs - x0) * (y1 - y0)) / area
        w0 = 1 - w1 - w2
        z = w0 * cam[i, 0, 2] + w1 * cam[i, 1, 2] + w2 * cam[i, 2, 2]
        inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0) & (z < depth)
        depth[inside] = z[inside]
        image[inside] = colours[i] * shade[i]
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def describe(obj: Polyhedron) -> str:
    """A short caption, e.g. ``'a box'`` (the multi-view stage trains with empty text; kept for inspection)."""
    return f"an {obj.name}" if obj.name[0] in "aeiou" else f"a {obj.name}"
