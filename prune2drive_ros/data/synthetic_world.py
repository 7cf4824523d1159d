"""A tiny procedural street, drawn through the nuScenes camera rig.

Each synthetic scene is one 3D world: a straight road with lanes, sidewalks, buildings, and cars and
pedestrians moving at constant velocity. Every image is a pinhole projection of that world through a
camera's calibration (extrinsics + intrinsics) at the camera's own timestamp, so the six views agree with
each other, consecutive frames agree in time, and the 3D annotations project onto the drawn objects.

A world can also carry what makes a real camera image busy (all optional, all drawn through the same
projection so the views still agree): sunlight that shades each face by its direction, shadows,
exposure and colour cast, sensor grain, clouds, patched asphalt and paving joints, lit and dark
windows, and street furniture (``World.decor``: trees, lamp posts, signs, barriers, bollards, bins).

No ROS and no nuscenes-devkit here: numpy and OpenCV only.
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass, field

import cv2
import numpy as np

IMAGE_WIDTH = 1600
IMAGE_HEIGHT = 900
LANE_WIDTH = 3.5
CARRIAGEWAY_HALF_WIDTH = 2 * LANE_WIDTH  # two driving lanes per direction
ROAD_HALF_WIDTH = CARRIAGEWAY_HALF_WIDTH + 2.5  # plus a parking strip at each kerb
SIDEWALK_WIDTH = 3.0
NEAR_PLANE = 0.3  # metres; polygons are clipped here so points behind the camera never project

# Camera calibration close to the real nuScenes rig: yaw of the optical axis in the ego frame (degrees,
# counter-clockwise from the vehicle's forward axis), mount position in the ego frame (metres) and
# pinhole intrinsics (fx = fy, cx, cy in pixels). CAM_BACK has the wider lens, as on the real car.
RIG_CALIBRATION: dict[str, tuple[float, tuple[float, float, float], tuple[float, float, float]]] = {
    "CAM_FRONT": (0.0, (1.701, 0.016, 1.511), (1266.42, 816.27, 491.51)),
    "CAM_FRONT_LEFT": (55.0, (1.524, 0.495, 1.509), (1272.60, 826.62, 479.75)),
    "CAM_FRONT_RIGHT": (-55.0, (1.551, -0.493, 1.496), (1260.85, 807.97, 495.33)),
    "CAM_BACK": (180.0, (0.028, 0.003, 1.579), (809.22, 829.22, 481.77)),
    "CAM_BACK_LEFT": (110.0, (1.036, 0.485, 1.591), (1256.75, 817.79, 451.95)),
    "CAM_BACK_RIGHT": (-110.0, (1.015, -0.481, 1.562), (1259.51, 807.25, 501.20)),
}

# Optical frame (x right, y down, z forward) -> ego frame (x forward, y left, z up) for a camera looking
# straight ahead; a camera's yaw is applied on top of this.
_OPTICAL_TO_EGO = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def rot_z(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def quaternion_from_matrix(m: np.ndarray) -> list[float]:
    """Rotation matrix -> unit quaternion [w, x, y, z] (nuScenes order), w >= 0."""
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(1.0 + trace)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    sign = -1.0 if q[0] < 0 else 1.0
    return [float(sign * v) for v in q]


def quaternion_from_yaw(yaw: float) -> list[float]:
    return [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]


@dataclass(frozen=True)
class CameraModel:
    """One camera of the rig: intrinsics K and the pose of the optical frame in the ego frame."""

    name: str
    k: np.ndarray  # 3x3
    rotation: np.ndarray  # 3x3, optical -> ego
    translation: np.ndarray  # 3, optical origin in ego frame

    @property
    def intrinsic_list(self) -> list[list[float]]:
        return [[float(v) for v in row] for row in self.k]


def make_rig() -> dict[str, CameraModel]:
    rig = {}
    for name, (yaw_deg, translation, (f, cx, cy)) in RIG_CALIBRATION.items():
        k = np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])
        rotation = rot_z(math.radians(yaw_deg)) @ _OPTICAL_TO_EGO
        rig[name] = CameraModel(name, k, rotation, np.array(translation, dtype=float))
    return rig


@dataclass
class Agent:
    """A road user moving at constant velocity in road coordinates (s along the road, l to its left)."""

    kind: str  # "car", "truck", "bus", "pedestrian" or "cone" (a traffic cone)
    category: str  # nuScenes category name
    size: tuple[float, float, float]  # width, length, height (nuScenes order)
    color: tuple[int, int, int]  # BGR
    color_name: str
    s0: float
    l0: float
    vs: float = 0.0
    vl: float = 0.0
    heading: float = 0.0  # yaw relative to the road direction
    role: str = ""  # "lead", "oncoming", "parked", "crossing", "sidewalk", "adjacent", ...

    def road_position(self, t: float) -> tuple[float, float]:
        return self.s0 + self.vs * t, self.l0 + self.vl * t

    @property
    def speed(self) -> float:
        return math.hypot(self.vs, self.vl)

    @property
    def moving(self) -> bool:
        return self.speed > 0.3

    def describe(self) -> str:
        if self.kind == "cone":
            return "traffic cone"
        if self.kind == "pedestrian":
            return f"pedestrian in {self.color_name}"
        noun = {"lamp": "lamp post", "sign": "road sign", "bin": "rubbish bin"}.get(self.kind, self.kind)
        return f"{self.color_name} {noun}" if self.color_name else noun


_UNIT_CORNERS = np.array([[1, 1, -1], [-1, 1, -1], [-1, -1, -1], [1, -1, -1],
                          [1, 1, 1], [-1, 1, 1], [-1, -1, 1], [1, -1, 1]], dtype=float)


@dataclass
class Box3D:
    center: np.ndarray  # global x, y, z
    yaw: float  # global yaw
    size: tuple[float, float, float]  # width, length, height
    color: tuple[int, int, int]
    # Quads drawn on the box's face that looks at the road (a building's windows): [Q, 4, 3] global
    # corners, their colours, and the face's outward normal (they are drawn when that face is).
    windows: np.ndarray | None = None
    window_colors: list[tuple[int, int, int]] = field(default_factory=list)
    window_normal: np.ndarray | None = None

    def corners(self) -> np.ndarray:
        """8x3 corners: bottom face 0-3, top face 4-7, counter-clockwise seen from above."""
        w, length, h = self.size
        local = _UNIT_CORNERS * np.array([length / 2, w / 2, h / 2])
        return local @ rot_z(self.yaw).T + self.center


# Box faces as corner indices, ordered so the normal points outwards, and a shading factor so the
# boxes look solid (top faces brightest).
FACES: tuple[tuple[tuple[int, int, int, int], float], ...] = (
    ((4, 5, 6, 7), 1.0),  # top
    ((0, 4, 7, 3), 0.85),  # front (+x)
    ((1, 2, 6, 5), 0.7),  # back
    ((0, 1, 5, 4), 0.78),  # left (+y)
    ((3, 7, 6, 2), 0.62),  # right
)

SKY_TOP = np.array([205, 160, 120], dtype=np.float32)  # BGR
SKY_HORIZON = np.array([235, 220, 205], dtype=np.float32)
GROUND_NEAR = np.array([70, 105, 95], dtype=np.float32)
GROUND_FAR = np.array([120, 140, 135], dtype=np.float32)
MARKING_WHITE = (235, 235, 235)
MARKING_YELLOW = (40, 200, 230)


@dataclass(frozen=True)
class Lighting:
    """Sunlight and camera response for one scene.

    A face is lit by ``ambient + (1 - ambient) * max(0, n . sun)``; ``exposure`` and ``tint`` (BGR gains)
    then scale the whole image, and ``grain`` is the standard deviation of the sensor noise (0-255 scale).
    """

    sun_azimuth: float = 0.8  # global yaw of the direction towards the sun (rad)
    sun_elevation: float = 0.9  # rad above the horizon
    ambient: float = 0.55
    exposure: float = 1.0
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    grain: float = 0.0

    @property
    def sun(self) -> np.ndarray:
        c = math.cos(self.sun_elevation)
        return np.array([c * math.cos(self.sun_azimuth), c * math.sin(self.sun_azimuth), math.sin(self.sun_elevation)])


@dataclass(frozen=True)
class Cloud:
    """A cloud at infinity: seen at the same global bearing from every camera."""

    azimuth: float  # global yaw (rad)
    elevation: float  # rad above the horizon
    width: float  # angular half-width (rad)
    height: float  # angular half-height (rad)
    shade: int  # grey level


@dataclass
class World:
    """A straight road through the map plus everything on it, for one scene."""

    origin: tuple[float, float]  # global x, y of road coordinate (0, 0)
    yaw: float  # global direction of increasing s
    right_hand_traffic: bool
    ego_speed: float
    agents: list[Agent] = field(default_factory=list)
    buildings: list[Box3D] = field(default_factory=list)
    crosswalk_s: float | None = None  # a zebra crossing across the road at this s, if any
    decor: list[Agent] = field(default_factory=list)  # static street furniture: drawn, never annotated or asked about
    decal_quads: np.ndarray = field(default_factory=lambda: np.zeros((0, 4, 3)))  # ground marks [Q, 4, 3], global
    decal_colors: list[tuple[int, int, int]] = field(default_factory=list)
    asphalt: tuple[int, int, int] = (88, 88, 92)
    sidewalk: tuple[int, int, int] = (165, 168, 170)
    clouds: list[Cloud] = field(default_factory=list)
    lighting: Lighting | None = None  # None: the fixed face shades of FACES, no grain
    noise_seed: int = 0  # sensor grain is drawn from (noise_seed, camera, time): frames are reproducible

    @property
    def ego_lane(self) -> float:
        # Inner lane of the ego's carriageway: right of the centre line where traffic keeps right.
        return -LANE_WIDTH / 2 if self.right_hand_traffic else LANE_WIDTH / 2

    def road_to_global(self, s: float, lateral: float) -> np.ndarray:
        c, si = math.cos(self.yaw), math.sin(self.yaw)
        return np.array([self.origin[0] + s * c - lateral * si, self.origin[1] + s * si + lateral * c])

    def ego_pose(self, t: float) -> tuple[np.ndarray, float]:
        """Ego translation (x, y, 0) and yaw at scene time t seconds."""
        xy = self.road_to_global(self.ego_speed * t, self.ego_lane)
        return np.array([xy[0], xy[1], 0.0]), self.yaw

    def agent_box(self, agent: Agent, t: float) -> Box3D:
        s, lateral = agent.road_position(t)
        xy = self.road_to_global(s, lateral)
        h = agent.size[2]
        return Box3D(np.array([xy[0], xy[1], h / 2]), self.yaw + agent.heading, agent.size, agent.color)

    def ground_quad(self, s0: float, s1: float, l0: float, l1: float) -> np.ndarray:
        pts = [self.road_to_global(s, lat) for s, lat in ((s0, l0), (s1, l0), (s1, l1), (s0, l1))]
        return np.array([[p[0], p[1], 0.0] for p in pts])


class Projector:
    """Global -> optical frame -> pixels for one camera at one ego pose."""

    def __init__(self, cam: CameraModel, ego_translation: np.ndarray, ego_yaw: float) -> None:
        r_ego = rot_z(ego_yaw)
        self.k = cam.k
        # p_cam = R_c^T (R_e^T (p - t_e) - t_c)
        self.a = cam.rotation.T @ r_ego.T
        self.b = -self.a @ ego_translation - cam.rotation.T @ cam.translation
        self.position = ego_translation + r_ego @ cam.translation  # camera centre in global frame

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        return points @ self.a.T + self.b

    def to_pixels(self, cam_points: np.ndarray) -> np.ndarray:
        z = cam_points[:, 2:3]
        return (cam_points[:, :2] / z) * np.array([self.k[0, 0], self.k[1, 1]]) + np.array([self.k[0, 2], self.k[1, 2]])


def _clip_near(poly: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman clip of a camera-frame polygon against z >= NEAR_PLANE."""
    out = []
    n = len(poly)
    for i in range(n):
        cur, nxt = poly[i], poly[(i + 1) % n]
        cur_in, nxt_in = cur[2] >= NEAR_PLANE, nxt[2] >= NEAR_PLANE
        if cur_in:
            out.append(cur)
        if cur_in != nxt_in:
            a = (NEAR_PLANE - cur[2]) / (nxt[2] - cur[2])
            out.append(cur + a * (nxt - cur))
    return np.array(out) if out else np.zeros((0, 3))


def _fill(image: np.ndarray, proj: Projector, cam_poly: np.ndarray, color: tuple[int, int, int]) -> None:
    clipped = _clip_near(cam_poly)
    if len(clipped) < 3:
        return
    px = proj.to_pixels(clipped)
    # Cheap reject of polygons entirely off one side of the image.
    height, width = image.shape[:2]
    if px[:, 0].max() < 0 or px[:, 0].min() > width or px[:, 1].max() < 0 or px[:, 1].min() > height:
        return
    px = np.clip(px, -1e6, 1e6)
    # 2 bits of sub-pixel precision keep thin lane markings from jittering between frames.
    cv2.fillPoly(image, [np.round(px * 4).astype(np.int32)], color, lineType=cv2.LINE_AA, shift=2)


def _background(k: np.ndarray, width: int = IMAGE_WIDTH, height: int = IMAGE_HEIGHT) -> np.ndarray:
    """Sky above the horizon, ground below; cameras have zero pitch so the horizon is the row cy."""
    horizon = round(float(k[1, 2]))
    rows = np.zeros((height, 3), dtype=np.float32)
    sky_t = np.linspace(0.0, 1.0, max(horizon, 1))[:, None]
    rows[:horizon] = SKY_TOP * (1 - sky_t) + SKY_HORIZON * sky_t
    ground_t = np.linspace(0.0, 1.0, height - horizon)[:, None]
    rows[horizon:] = GROUND_FAR * (1 - ground_t) + GROUND_NEAR * ground_t
    return np.repeat(rows[:, None, :], width, axis=1).astype(np.uint8)


_BACKGROUNDS: dict[tuple[float, ...], np.ndarray] = {}


def _shade(color: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(int(min(255, c * factor)) for c in color)  # type: ignore[return-value]


def _agent_parts(world: World, agent: Agent, t: float) -> list[Box3D]:
    """The annotated box of an agent split into parts that read as a car / truck / person."""
    box = world.agent_box(agent, t)
    w, length, h = box.size
    fwd = np.array([math.cos(box.yaw), math.sin(box.yaw), 0.0])
    left = np.array([-fwd[1], fwd[0], 0.0])
    base = box.center - np.array([0.0, 0.0, h / 2])

    def part(along: float, z0: float, z1: float, pw: float, pl: float, color: tuple[int, int, int],
             side: float = 0.0) -> Box3D:
        return Box3D(base + fwd * along + left * side + np.array([0.0, 0.0, (z0 + z1) / 2]), box.yaw,
                     (pw, pl, z1 - z0), color)

    def tail_lights(z: float) -> list[Box3D]:  # red lamps at both rear corners: small, bright, cone-coloured
        return [part(-length / 2 - 0.02, z, z + 0.16, 0.3, 0.06, TAIL_LIGHT, side) for side in (w / 2 - 0.2, 0.2 - w / 2)]

    if agent.kind in DECOR_KINDS:
        return _decor_parts(agent, part, w, length, h)
    if agent.kind == "cone":
        # A weighted base, an orange body with a white reflective band, and an orange tip.
        return [
            part(0.0, 0.0, 0.06, w * 1.3, length * 1.3, (40, 40, 45)),
            part(0.0, 0.06, 0.45 * h, w, length, agent.color),
            part(0.0, 0.45 * h, 0.65 * h, w * 0.8, length * 0.8, (240, 240, 240)),
            part(0.0, 0.65 * h, h, w * 0.6, length * 0.6, agent.color),
        ]
    if agent.kind == "pedestrian":
        return [
            part(0.0, 0.0, 0.85, w * 0.55, length * 0.45, (50, 45, 40)),
            part(0.0, 0.85, 1.45 * h / 1.75, w * 0.8, length * 0.6, agent.color),
            part(0.0, 1.45 * h / 1.75 + 0.03, h, w * 0.35, length * 0.35, (120, 150, 190)),
        ]
    if agent.kind == "car":
        cabin = (40, 40, 40) if agent.color_name != "black" else (90, 80, 70)
        return [
            part(0.0, 0.0, 0.35, w * 0.9, length * 0.8, (25, 25, 25)),
            part(0.0, 0.3, 0.95 * h / 1.55, w, length, agent.color),
            part(-0.08 * length, 0.95 * h / 1.55, h, w * 0.88, length * 0.5, cabin),
            *tail_lights(0.62),
        ]
    # Truck or bus: a cab / body split so the front reads differently from the back.
    return [
        part(0.0, 0.0, 0.6, w * 0.9, length * 0.9, (25, 25, 25)),
        part(0.38 * length, 0.5, h * 0.75, w, length * 0.22, _shade(agent.color, 0.8)),
        part(-0.11 * length, 0.5, h, w, length * 0.76, agent.color),
        *tail_lights(0.75),
    ]


TAIL_LIGHT = (30, 40, 215)  # BGR
DECOR_KINDS = ("tree", "lamp", "sign", "barrier", "bollard", "bin")
_POLE = (105, 105, 110)
_DARK = (35, 35, 38)


def _decor_parts(agent: Agent, part, w: float, length: float, h: float) -> list[Box3D]:
    """Street furniture as boxes; ``part(along, z0, z1, width, length, colour, side)`` places one."""
    c = agent.color
    if agent.kind == "tree":
        return [part(0.0, 0.0, 0.45 * h, 0.3, 0.3, (40, 60, 85)), part(0.0, 0.4 * h, h, w, length, c),
                part(0.0, 0.55 * h, 0.9 * h, w * 1.15, length * 0.8, _shade(c, 0.85))]
    if agent.kind == "lamp":
        return [part(0.0, 0.0, h, 0.16, 0.16, _POLE), part(0.0, h - 0.2, h, 0.35, 0.9, _POLE)]
    if agent.kind == "sign":  # a panel on a pole, facing along the heading, with a dark symbol on it
        return [part(0.0, 0.0, h - 0.7, 0.07, 0.07, _POLE), part(0.0, h - 0.75, h, w, length, c),
                part(0.0, h - 0.58, h - 0.17, 0.45 * w, length + 0.02, _DARK)]
    if agent.kind == "barrier":  # two legs and two bars striped in the barrier's colour and white, across
        segments = 4
        bars = [part(0.0, z0, z1, w / segments, length, c if (i + shift) % 2 == 0 else (235, 235, 235),
                     -w / 2 + (i + 0.5) * w / segments)
                for shift, (z0, z1) in enumerate(((0.62 * h, 0.9 * h), (0.3 * h, 0.5 * h))) for i in range(segments)]
        return [part(0.0, 0.0, h, 0.08, length * 1.4, _DARK, side) for side in (0.45 * w, -0.45 * w)] + bars
    if agent.kind == "bollard":  # tapered like a cone, in another colour, with a dark band
        return [part(0.0, 0.0, 0.4 * h, w, length, c), part(0.0, 0.4 * h, 0.55 * h, 0.8 * w, 0.8 * length, _DARK),
                part(0.0, 0.55 * h, h, 0.6 * w, 0.6 * length, c)]
    return [part(0.0, 0.0, 0.85 * h, w, length, c), part(0.0, 0.85 * h, h, w * 1.08, length * 1.08, _DARK)]  # bin


_FACE_INDEX = np.array([idx for idx, _ in FACES])


def _draw_box(image: np.ndarray, proj: Projector, box: Box3D, light: Lighting | None = None) -> None:
    corners = box.corners()
    cam = proj.to_camera(corners)
    if cam[:, 2].max() < NEAR_PLANE:
        return
    whole = cam[:, 2].min() >= NEAR_PLANE
    height, width = image.shape[:2]
    if whole:  # wholly in front: skip boxes that project beside the image
        px = proj.to_pixels(cam)
        if px[:, 0].max() < 0 or px[:, 0].min() > width or px[:, 1].max() < 0 or px[:, 1].min() > height:
            return
    # Outward face normals (FACES' order: top, +x, -x, +y, -y) and a point on each face.
    c, si = math.cos(box.yaw), math.sin(box.yaw)
    normals = np.array([[0.0, 0.0, 1.0], [c, si, 0.0], [-c, -si, 0.0], [-si, c, 0.0], [si, -c, 0.0]])
    w, length, h = box.size
    points = box.center + normals * np.array([[h / 2], [length / 2], [length / 2], [w / 2], [w / 2]])
    facing = np.einsum("fk,fk->f", normals, proj.position - points) > 0  # not a back face
    if light is None:
        factors = [factor for _, factor in FACES]
    else:
        factors = (light.ambient + (1 - light.ambient) * np.clip(normals @ light.sun, 0.0, None)).tolist()
    for (idx, _), factor, visible in zip(FACES, factors, facing, strict=True):
        if not visible:
            continue
        if whole:  # no clipping needed: fill the projected corners directly
            poly = np.round(np.clip(px[list(idx)], -1e6, 1e6) * 4).astype(np.int32)
            cv2.fillPoly(image, [poly], _shade(box.color, factor), lineType=cv2.LINE_AA, shift=2)
        else:
            _fill(image, proj, cam[list(idx)], _shade(box.color, factor))
    if box.windows is not None and np.dot(box.window_normal, proj.position - box.windows[0, 0]) > 0:
        factor = 1.0 if light is None else light.ambient + (1 - light.ambient) * max(0.0, float(
            box.window_normal @ light.sun))
        _fill_quads(image, proj, box.windows, [_shade(color, factor) for color in box.window_colors])


def _fill_quads(image: np.ndarray, proj: Projector, quads: np.ndarray, colors: list[tuple[int, int, int]]) -> None:
    """Many ground or facade quads ([Q, 4, 3] global) at once: one projection, one fillPoly per colour."""
    cam = quads @ proj.a.T + proj.b  # [Q, 4, 3]
    front = cam[:, :, 2].min(axis=1) >= NEAR_PLANE
    for i in np.flatnonzero(~front & (cam[:, :, 2].max(axis=1) >= NEAR_PLANE)):  # crossing the near plane
        _fill(image, proj, cam[i], colors[i])
    if not front.any():
        return
    z = cam[front][:, :, 2:3]
    px = cam[front][:, :, :2] / z * np.array([proj.k[0, 0], proj.k[1, 1]]) + np.array([proj.k[0, 2], proj.k[1, 2]])
    height, width = image.shape[:2]
    inside = (px[:, :, 0].max(axis=1) >= 0) & (px[:, :, 0].min(axis=1) <= width) & \
        (px[:, :, 1].max(axis=1) >= 0) & (px[:, :, 1].min(axis=1) <= height)
    polys = np.round(np.clip(px, -1e6, 1e6) * 4).astype(np.int32)
    by_color: dict[tuple[int, int, int], list[np.ndarray]] = {}
    for poly, i in zip(polys[inside], np.flatnonzero(front)[inside], strict=True):
        by_color.setdefault(colors[i], []).append(poly)
    for color, group in by_color.items():
        cv2.fillPoly(image, group, color, lineType=cv2.LINE_AA, shift=2)


def _draw_ground(image: np.ndarray, proj: Projector, world: World, s_ego: float) -> None:
    s0, s1 = s_ego - 150.0, s_ego + 400.0
    quads: list[tuple[np.ndarray, tuple[int, int, int]]] = [
        (world.ground_quad(s0, s1, -ROAD_HALF_WIDTH, ROAD_HALF_WIDTH), world.asphalt),
        (world.ground_quad(s0, s1, ROAD_HALF_WIDTH, ROAD_HALF_WIDTH + SIDEWALK_WIDTH), world.sidewalk),
        (world.ground_quad(s0, s1, -ROAD_HALF_WIDTH - SIDEWALK_WIDTH, -ROAD_HALF_WIDTH), world.sidewalk),
    ]
    # Solid edge lines and a double centre line (yellow where traffic keeps right, white otherwise).
    centre = MARKING_YELLOW if world.right_hand_traffic else MARKING_WHITE
    for lateral, colour in ((CARRIAGEWAY_HALF_WIDTH, MARKING_WHITE), (-CARRIAGEWAY_HALF_WIDTH, MARKING_WHITE),
                            (0.12, centre), (-0.12, centre)):
        quads.append((world.ground_quad(s0, s1, lateral - 0.07, lateral + 0.07), colour))
    # Dashed lane dividers, phase-locked to the road so they stay put while the ego moves.
    first = math.floor((s_ego - 60.0) / 9.0) * 9.0
    for lateral in (LANE_WIDTH, -LANE_WIDTH):
        for s in np.arange(first, s_ego + 120.0, 9.0):
            quads.append((world.ground_quad(s, s + 3.0, lateral - 0.075, lateral + 0.075), MARKING_WHITE))
    if world.crosswalk_s is not None:
        for lateral in np.arange(-CARRIAGEWAY_HALF_WIDTH + 0.25, CARRIAGEWAY_HALF_WIDTH, 1.0):
            quads.append((world.ground_quad(world.crosswalk_s - 2.0, world.crosswalk_s + 2.0, lateral, lateral + 0.5),
                          MARKING_WHITE))
    for quad, colour in quads:
        _fill(image, proj, proj.to_camera(quad), colour)


def scaled_camera(cam: CameraModel, scale: float) -> CameraModel:
    """The same camera with its image resampled by ``scale`` (a 1600x900 view becomes 1600s x 900s)."""
    k = cam.k.copy()
    k[:2] *= scale
    return CameraModel(cam.name, k, cam.rotation, cam.translation)


def render(world: World, cam: CameraModel, t: float, scale: float = 1.0) -> np.ndarray:
    """BGR image of the world seen by ``cam`` at scene time ``t`` seconds: 900x1600, or that times ``scale``.

    A small ``scale`` draws the same view at low resolution directly (cheap, for training).
    """
    width, height = round(IMAGE_WIDTH * scale), round(IMAGE_HEIGHT * scale)
    if scale != 1.0:
        cam = scaled_camera(cam, scale)
    key = (*cam.k.ravel(), width, height)
    if key not in _BACKGROUNDS:
        _BACKGROUNDS[key] = _background(cam.k, width, height)
    image = _BACKGROUNDS[key].copy()
    ego_t, ego_yaw = world.ego_pose(t)
    proj = Projector(cam, ego_t, ego_yaw)
    light = world.lighting
    for cloud in world.clouds:
        _draw_cloud(image, proj, cloud)
    _draw_ground(image, proj, world, world.ego_speed * t)
    if len(world.decal_quads):
        _fill_quads(image, proj, world.decal_quads, world.decal_colors)
    movers = world.agents + world.decor
    if light is not None:
        boxes = [world.agent_box(agent, t) for agent in movers]
        _fill_quads(image, proj, _shadow_quads(boxes, light), [SHADOW] * len(boxes))

    # Painter's algorithm: far objects first. Objects do not interpenetrate, so centre depth suffices.
    objects: list[tuple[float, list[Box3D]]] = []
    for building in world.buildings:
        if _may_show(image, proj, building):
            objects.append((float(np.linalg.norm(building.center - proj.position)), [building]))
    for agent in movers:
        if _may_show(image, proj, world.agent_box(agent, t)):
            parts = _agent_parts(world, agent, t)
            objects.append((float(np.linalg.norm(parts[1].center - proj.position)), parts))
    for _, parts in sorted(objects, key=lambda item: -item[0]):
        for part in parts:
            _draw_box(image, proj, part, light)
    return image if light is None else _develop(image, light, (world.noise_seed, zlib.crc32(cam.name.encode()),
                                                                round(t * 1000)))


def _draw_cloud(image: np.ndarray, proj: Projector, cloud: Cloud) -> None:
    """An ellipse where the cloud's direction projects; at infinity, so only the rotation matters."""
    c = math.cos(cloud.elevation)
    direction = proj.a @ np.array([c * math.cos(cloud.azimuth), c * math.sin(cloud.azimuth), math.sin(cloud.elevation)])
    if direction[2] < 0.2:
        return
    u, v = proj.to_pixels(direction[None])[0]
    fx, fy = proj.k[0, 0], proj.k[1, 1]
    axes = (max(1, round(fx * cloud.width / direction[2])), max(1, round(fy * cloud.height / direction[2])))
    height, width = image.shape[:2]
    if -axes[0] < u < width + axes[0] and -axes[1] < v < height + axes[1]:
        cv2.ellipse(image, (round(u), round(v)), axes, 0.0, 0.0, 360.0, (cloud.shade,) * 3, -1, cv2.LINE_AA)


SHADOW = (52, 54, 58)


def _may_show(image: np.ndarray, proj: Projector, box: Box3D) -> bool:
    """False when the box's bounding sphere lies wholly behind the camera or beside the image (cheap cull)."""
    x, y, z = proj.to_camera(box.center[None])[0]
    r = 0.5 * math.sqrt(sum(v * v for v in box.size)) * 1.3  # parts (mirrors, sign panels) stick out a little
    if z + r < NEAR_PLANE:
        return False
    if z - r <= NEAR_PLANE:
        return True
    height, width = image.shape[:2]
    fx, fy, cx, cy = proj.k[0, 0], proj.k[1, 1], proj.k[0, 2], proj.k[1, 2]
    spread_x, spread_y = fx * r / (z - r), fy * r / (z - r)
    u, v = fx * x / z + cx, fy * y / z + cy
    return -spread_x < u < width + spread_x and -spread_y < v < height + spread_y


def _shadow_quads(boxes: list[Box3D], light: Lighting) -> np.ndarray:
    """[Q, 4, 3] ground quads: each box's footprint swept away from the sun by its height.

    The quad joins the footprint's two corners that lie farthest apart across the sweep with their
    swept copies: the shadow's hull, but for the footprint's own corners (which the box covers anyway).
    """
    if not boxes:
        return np.zeros((0, 4, 3))
    sun = light.sun[:2] / max(float(np.linalg.norm(light.sun[:2])), 1e-9)
    across = np.array([-sun[1], sun[0]])
    reach = 1.0 / max(math.tan(light.sun_elevation), 0.25)
    feet = np.stack([b.corners()[:4, :2] for b in boxes])  # [Q, 4, 2]
    side = feet @ across
    a = feet[np.arange(len(boxes)), side.argmin(axis=1)]
    b = feet[np.arange(len(boxes)), side.argmax(axis=1)]
    away = -sun[None, :] * (reach * np.array([box.size[2] for box in boxes]))[:, None]
    quads = np.stack([a, b, b + away, a + away], axis=1)
    return np.concatenate([quads, np.full((*quads.shape[:2], 1), 0.01)], axis=2)


_GRAIN: dict[tuple[int, int], np.ndarray] = {}


def _develop(image: np.ndarray, light: Lighting, seed: tuple[int, ...]) -> np.ndarray:
    """Exposure, colour cast and sensor grain, as the camera's processing would add them.

    The grain is a window of one fixed noise field, at an offset drawn from ``seed``: reproducible per
    frame, and far cheaper than drawing fresh noise for every pixel.
    """
    out = image.astype(np.float32) * (light.exposure * np.array(light.tint, dtype=np.float32))
    if light.grain > 0:
        h, w = image.shape[:2]
        if (h, w) not in _GRAIN:
            _GRAIN[(h, w)] = np.random.default_rng(0).standard_normal((2 * h, 2 * w, 3), dtype=np.float32)
        oy, ox = np.random.default_rng(seed).integers(0, [h, w])
        out += light.grain * _GRAIN[(h, w)][oy:oy + h, ox:ox + w]
    return np.clip(out, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class ObjectView:
    """Where an agent appears in one camera image."""

    camera: str
    bbox: tuple[float, float, float, float]  # x1, y1, x2, y2, clipped to the image
    center: tuple[float, float]  # projected 3D box centre, pixels
    depth: float  # metres along the optical axis


def project_agent(world: World, agent: Agent, cam: CameraModel, t: float) -> ObjectView | None:
    """The agent's 2D box in ``cam`` at time ``t``, or None if its centre is not in the image."""
    ego_t, ego_yaw = world.ego_pose(t)
    proj = Projector(cam, ego_t, ego_yaw)
    box = world.agent_box(agent, t)
    pts = proj.to_camera(np.vstack([box.center[None, :], box.corners()]))
    if pts[0, 2] < 1.0 or pts[1:, 2].min() < NEAR_PLANE:
        return None
    px = proj.to_pixels(pts)
    cx, cy = px[0]
    if not (0 <= cx < IMAGE_WIDTH and 0 <= cy < IMAGE_HEIGHT):
        return None
    x1, y1 = np.clip(px[1:].min(axis=0), 0, [IMAGE_WIDTH - 1, IMAGE_HEIGHT - 1])
    x2, y2 = np.clip(px[1:].max(axis=0), 0, [IMAGE_WIDTH - 1, IMAGE_HEIGHT - 1])
    return ObjectView(cam.name, (float(x1), float(y1), float(x2), float(y2)), (float(cx), float(cy)), float(pts[0, 2]))


# --- world generation ---------------------------------------------------------------------------------

CAR_COLORS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("white", (235, 235, 235)), ("black", (30, 30, 32)), ("silver", (185, 185, 180)), ("red", (40, 40, 200)),
    ("blue", (170, 90, 30)), ("gray", (120, 120, 120)), ("dark green", (60, 90, 30)), ("yellow", (40, 200, 235)),
)
SHIRT_COLORS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("a red shirt", (50, 50, 210)), ("a blue jacket", (160, 80, 40)), ("a white shirt", (230, 230, 230)),
    ("a green coat", (70, 140, 60)), ("an orange vest", (30, 140, 245)), ("a black coat", (35, 35, 35)),
)

SCENARIOS: tuple[str, ...] = ("cruise", "crossing", "slow_follow")
BUILDING_COLORS: tuple[tuple[int, int, int], ...] = (
    (150, 170, 190), (120, 130, 150), (180, 180, 175), (110, 120, 170), (140, 150, 140))


def make_world(rng: random.Random, scenario: str, origin: tuple[float, float], yaw: float,
               right_hand_traffic: bool, duration: float) -> World:
    """A world for one scenario: ``cruise`` (normal speed in traffic), ``crossing`` (ego stopped for a
    pedestrian on the crossing) or ``slow_follow`` (slow behind a truck)."""
    ego_speed = {"cruise": 8.0, "crossing": 0.0, "slow_follow": 3.5}[scenario]
    world = World(origin, yaw, right_hand_traffic, ego_speed)
    side = -1.0 if right_hand_traffic else 1.0  # lateral sign of the ego's carriageway
    lane_in, lane_out = side * LANE_WIDTH / 2, side * LANE_WIDTH * 1.5

    def car(s0: float, lateral: float, vs: float, role: str, heading: float = 0.0) -> Agent:
        name, color = rng.choice(CAR_COLORS)
        size = (rng.uniform(1.8, 2.0), rng.uniform(4.2, 4.8), rng.uniform(1.45, 1.65))
        return Agent("car", "vehicle.car", size, color, name, s0, lateral, vs, 0.0, heading, role)

    def pedestrian(s0: float, lateral: float, vs: float, vl: float, role: str) -> Agent:
        name, color = rng.choice(SHIRT_COLORS)
        heading = math.atan2(vl, vs) if (vs or vl) else rng.choice([0.0, math.pi])
        size = (rng.uniform(0.55, 0.7), rng.uniform(0.55, 0.75), rng.uniform(1.6, 1.85))
        return Agent("pedestrian", "human.pedestrian.adult", size, color, name, s0, lateral, vs, vl, heading, role)

    if scenario == "cruise":
        world.agents.append(car(rng.uniform(16, 22), lane_in, ego_speed, "lead"))
        world.agents.append(car(rng.uniform(-4, 4), lane_out, ego_speed + 1.5, "adjacent"))
    elif scenario == "crossing":
        # A pedestrian walks across the ego's carriageway in front of the stopped ego vehicle.
        world.crosswalk_s = rng.uniform(8.5, 10.0)
        world.agents.append(pedestrian(world.crosswalk_s, side * LANE_WIDTH * 1.5, 0.0, -side * 1.3, "crossing"))
        world.agents.append(car(rng.uniform(14, 18), -lane_in, 0.0, "waiting", heading=math.pi))
    else:
        name, color = rng.choice(CAR_COLORS[:4])
        world.agents.append(Agent("truck", "vehicle.truck", (2.5, 8.5, 3.2), color, name, rng.uniform(13, 16),
                                  lane_in, ego_speed, 0.0, 0.0, "lead"))
        world.agents.append(car(rng.uniform(-12, -8), lane_out, ego_speed + 4.0, "overtaking"))
    # Oncoming traffic, cars following behind, parked cars and pedestrians on both sidewalks.
    for _ in range(rng.randint(2, 3)):
        world.agents.append(car(rng.uniform(15, 80), -rng.choice([lane_in, lane_out]), -rng.uniform(6, 11),
                                "oncoming", heading=math.pi))
    world.agents.append(car(rng.uniform(-30, -15), lane_in, ego_speed, "behind"))
    for s in rng.sample(range(-40, 60, 12), 3):
        world.agents.append(car(float(s), side * (ROAD_HALF_WIDTH - 1.25), 0.0, "parked"))
    for _ in range(rng.randint(3, 5)):
        lateral_side = rng.choice([-1.0, 1.0])
        walking = rng.random() < 0.7
        world.agents.append(pedestrian(rng.uniform(-25, 45), lateral_side * (ROAD_HALF_WIDTH + rng.uniform(0.8, 2.2)),
                                       rng.choice([-1.3, 1.3]) if walking else 0.0, 0.0, "sidewalk"))
    _remove_overlaps(world, duration + 1.0)

    for lateral_side in (-1.0, 1.0):
        s = -160.0
        while s < 420.0:
            length, depth, height = rng.uniform(10, 24), rng.uniform(8, 14), rng.uniform(6, 22)
            setback = ROAD_HALF_WIDTH + SIDEWALK_WIDTH + rng.uniform(1.0, 3.0) + depth / 2
            xy = world.road_to_global(s + length / 2, lateral_side * setback)
            shade = rng.uniform(0.6, 1.0)
            base = rng.choice(BUILDING_COLORS)
            color = tuple(int(c * shade) for c in base)
            world.buildings.append(Box3D(np.array([xy[0], xy[1], height / 2]), yaw, (depth, length, height), color))
            s += length + rng.uniform(2.0, 8.0)
    return world


def _remove_overlaps(world: World, horizon: float) -> None:
    """Drop agents that would overlap an earlier one (or the ego) during the scene; keeps boxes disjoint."""
    kept: list[Agent] = []
    times = np.linspace(0.0, horizon, 21)
    ego = Agent("car", "", (2.0, 4.8, 1.6), (0, 0, 0), "", 0.0, world.ego_lane, world.ego_speed)
    for agent in world.agents:
        clash = False
        for other in [ego, *kept]:
            for t in times:
                (sa, la), (sb, lb) = agent.road_position(t), other.road_position(t)
                gap_s = (max(agent.size[:2]) + max(other.size[:2])) / 2 + 1.0
                gap_l = (min(agent.size[:2]) + min(other.size[:2])) / 2 + 0.3
                if abs(sa - sb) < gap_s and abs(la - lb) < gap_l:
                    clash = True
                    break
            if clash:
                break
        if not clash:
            kept.append(agent)
    world.agents = kept


# --- appearance -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Look:
    """The ranges a street's appearance is drawn from; ``dress_street`` draws one value of each per scene."""

    exposure: tuple[float, float] = (0.75, 1.15)
    sun_elevation: tuple[float, float] = (0.3, 1.2)  # rad
    ambient: tuple[float, float] = (0.4, 0.7)
    warmth: tuple[float, float] = (-0.06, 0.06)  # colour cast: positive is warmer (more red, less blue)
    grain: tuple[float, float] = (1.0, 5.0)
    clouds: tuple[int, int] = (0, 6)
    asphalt: tuple[int, int] = (72, 105)  # grey level of the road
    building_colors: tuple[tuple[int, int, int], ...] = BUILDING_COLORS
    lit_windows: float = 0.15  # share of windows that are bright
    trees: tuple[int, int] = (3, 9)
    lamps: tuple[int, int] = (2, 6)


TREE_GREENS = ((50, 120, 45), (60, 135, 70), (40, 95, 50), (70, 140, 95))
_WINDOW_COLORS = ((58, 52, 46), (150, 122, 96), (120, 105, 95))
_WINDOW_LIT = (175, 215, 230)


def _uniform(rng: random.Random, bounds: tuple[float, float]) -> float:
    return rng.uniform(*bounds)


def dress_street(world: World, rng: random.Random, look: Look | None = None, s_range: tuple[float, float] = (-60.0, 90.0),
                 noise_seed: int | None = None) -> None:
    """Give a plain street light, texture and furniture drawn from ``look``, along road stretch ``s_range``.

    Adds a sun and camera response, clouds, a road with patches, cracks and manholes, paving joints,
    windows on the buildings that face the road, and trees and lamp posts (``World.decor``) on the
    sidewalks' outer edge, where no pedestrian walks.
    """
    look = look or Look()
    warmth = _uniform(rng, look.warmth)
    world.lighting = Lighting(rng.uniform(-math.pi, math.pi), _uniform(rng, look.sun_elevation),
                              _uniform(rng, look.ambient), _uniform(rng, look.exposure),
                              (1.0 - warmth, 1.0, 1.0 + warmth), _uniform(rng, look.grain))
    world.noise_seed = rng.randrange(2**31) if noise_seed is None else noise_seed
    world.clouds = [Cloud(rng.uniform(-math.pi, math.pi), rng.uniform(0.03, 0.3), w := rng.uniform(0.05, 0.2),
                          w * rng.uniform(0.2, 0.45), rng.randint(222, 250))
                    for _ in range(rng.randint(*look.clouds))]
    grey = rng.randint(*look.asphalt)
    world.asphalt = (grey, grey, grey + 4)
    paving = rng.randint(150, 185)
    world.sidewalk = (paving, paving + 3, paving + 5)

    quads: list[np.ndarray] = []
    colors: list[tuple[int, int, int]] = []

    def mark(s: float, lateral: float, length: float, width: float, angle: float, color: tuple[int, int, int]) -> None:
        along, across = np.array([math.cos(angle), math.sin(angle)]), np.array([-math.sin(angle), math.cos(angle)])
        corners = [np.array([s, lateral]) + a * along * length / 2 + b * across * width / 2
                   for a, b in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
        quads.append(np.array([[*world.road_to_global(*c), 0.005] for c in corners]))
        colors.append(color)

    def near(c: tuple[int, int, int], delta: int) -> tuple[int, int, int]:
        return tuple(max(0, min(255, v + delta)) for v in c)  # type: ignore[return-value]

    s0, s1 = s_range
    for _ in range(rng.randint(6, 14)):  # patched asphalt, lighter or darker than the road
        mark(rng.uniform(s0, s1), rng.uniform(-ROAD_HALF_WIDTH + 0.5, ROAD_HALF_WIDTH - 0.5), rng.uniform(0.8, 4.0),
             rng.uniform(0.5, 2.0), rng.uniform(-0.3, 0.3), near(world.asphalt, rng.choice([-14, -9, 8, 12])))
    for _ in range(rng.randint(4, 10)):  # cracks
        mark(rng.uniform(s0, s1), rng.uniform(-ROAD_HALF_WIDTH, ROAD_HALF_WIDTH), rng.uniform(1.0, 4.0), 0.06,
             rng.uniform(-1.2, 1.2), near(world.asphalt, -25))
    for _ in range(rng.randint(1, 4)):  # manhole covers
        mark(rng.uniform(s0, s1), rng.uniform(-ROAD_HALF_WIDTH + 1, ROAD_HALF_WIDTH - 1), 0.7, 0.7, 0.0,
             near(world.asphalt, -30))
    # Paving joints across both sidewalks, every ``spacing`` metres: thin quads, built all at once.
    along = np.arange(s0, s1, rng.uniform(1.2, 2.5))
    inner = np.array([ROAD_HALF_WIDTH, ROAD_HALF_WIDTH + SIDEWALK_WIDTH])
    corners = np.array([(a + ds, side * lat) for side in (-1.0, 1.0) for a in along
                        for ds, lat in ((0.0, inner[0]), (0.05, inner[0]), (0.05, inner[1]), (0.0, inner[1]))])
    c, si = math.cos(world.yaw), math.sin(world.yaw)
    joints = np.stack([world.origin[0] + corners[:, 0] * c - corners[:, 1] * si,
                       world.origin[1] + corners[:, 0] * si + corners[:, 1] * c, np.full(len(corners), 0.005)], 1)
    world.decal_quads = np.concatenate([np.array(quads).reshape(-1, 4, 3), joints.reshape(-1, 4, 3)])
    world.decal_colors = colors + [near(world.sidewalk, -35)] * (len(joints) // 4)

    road = np.array([math.cos(world.yaw), math.sin(world.yaw)])
    lateral_unit = np.array([-road[1], road[0], 0.0])
    origin = world.road_to_global(0.0, 0.0)
    for building in world.buildings:
        building.color = _shade(rng.choice(look.building_colors), rng.uniform(0.6, 1.0))
        s, offset = float(np.dot(building.center[:2] - origin, road)), float(np.dot(building.center[:2] - origin,
                                                                                  lateral_unit[:2]))
        if s0 - 20.0 <= s <= s1 + 20.0:  # windows only along the stretch the cameras see well
            _add_windows(building, -math.copysign(1.0, offset) * lateral_unit, rng, look.lit_windows)

    for kind, count in (("tree", rng.randint(*look.trees)), ("lamp", rng.randint(*look.lamps))):
        for _ in range(count):
            side = rng.choice([-1.0, 1.0])
            if kind == "tree":
                size = (rng.uniform(2.0, 3.5), rng.uniform(2.0, 3.5), rng.uniform(4.5, 8.0))
                lateral, color, name = ROAD_HALF_WIDTH + SIDEWALK_WIDTH - 0.3, rng.choice(TREE_GREENS), ""
            else:
                size, lateral, color, name = (0.35, 0.9, rng.uniform(5.0, 7.0)), ROAD_HALF_WIDTH + 0.3, _POLE, ""
            world.decor.append(Agent(kind, "", size, color, name, rng.uniform(s0, s1), side * lateral, role="decor"))


def _add_windows(building: Box3D, normal: np.ndarray, rng: random.Random, lit_share: float) -> None:
    """Rows of windows on the building face whose outward normal is ``normal`` (horizontal, unit)."""
    depth, length, height = building.size
    along = np.array([math.cos(building.yaw), math.sin(building.yaw), 0.0])
    face = building.center.copy()
    face[:2] += normal[:2] * (depth / 2 + 0.03)
    face[2] = 0.0
    floor, column = rng.uniform(2.8, 3.6), rng.uniform(2.2, 3.2)
    win_w, win_h = column * rng.uniform(0.4, 0.7), floor * rng.uniform(0.35, 0.55)
    dark = rng.choice(_WINDOW_COLORS)
    quads, colors = [], []
    for z in np.arange(1.2, height - floor * 0.6, floor):
        for x in np.arange(-length / 2 + column / 2, length / 2 - column / 2 + 1e-6, column):
            c = face + along * x
            quads.append([c + along * dx + np.array([0.0, 0.0, z + dz])
                          for dx, dz in ((-win_w / 2, 0.0), (win_w / 2, 0.0), (win_w / 2, win_h), (-win_w / 2, win_h))])
            colors.append(_WINDOW_LIT if rng.random() < lit_share else dark)
    if quads:
        building.windows = np.array(quads)
        building.window_colors = colors
        building.window_normal = normal
