"""CarRacing's state frame drawn directly at observation resolution, with arrays instead of pygame.

Gymnasium draws every road and grass polygon one by one on a 1000x800 window, flips it and
smooth-scales it to 96x96 (about 11 ms a frame). `StateRenderer` produces the same 96x96 frame
(about 20x faster, see docs/fast_render.md):

1. **Camera.** Gymnasium maps a world point w to the window as ``zoom * R(-car angle) (w - car) +
   (500, 200)``, then flips the window vertically and scales it by (96/1000, 96/800). Composed,
   this is one affine map from world to *output pixels*, which is all we use.
2. **Culling.** Road, kerb and grass polygons are fixed for an episode; a polygon is drawn if its
   bounding circle meets the circle around the visible part of the frame.
3. **Exact-area rasterisation.** Smooth-scaling averages the window pixels under each output pixel,
   so an output pixel shows each colour in proportion to the area it covers. We compute that area
   exactly, the way font rasterisers do: every polygon edge is cut into pieces, one per output row;
   a piece with vertical extent ``dy`` adds ``dy`` to the coverage of everything to its right in
   that row (+ on the polygon's left side, - on its right side). "Everything to its right" is a
   prefix sum along the row; a piece that is slanted within its pixel row adds a linear ramp rather
   than a step, which becomes a double prefix sum of three impulses at each end of the piece.
   One `np.bincount` gathers all impulses, two `np.cumsum` give the coverage of every polygon layer.
4. **Compositing.** Gymnasium paints in order: background, grass, road and kerbs, wheels, hull.
   Polygons within one layer do not overlap (adjacent road tiles share an edge), so a layer is one
   coverage plane plus its colour-weighted planes, and painting a layer over what is below is
   ``below * (1 - coverage) + colour``.
5. **Indicator bar.** The black bar and its axis-aligned bars are drawn with exact rectangle
   coverage; the score is gymnasium's own font, rendered once per distinct score text and cached.
"""

from __future__ import annotations

import functools

import numpy as np
import pygame
from gymnasium.envs.box2d import car_dynamics
from gymnasium.envs.box2d.car_racing import GRASS_DIM, PLAYFIELD, SCALE, STATE_H, STATE_W, WINDOW_H, WINDOW_W

# Window pixels -> output pixels: the window is scaled anisotropically to the 96x96 state.
X_SCALE = STATE_W / WINDOW_W  # 0.096
Y_SCALE = STATE_H / WINDOW_H  # 0.12
# The car sits at (WINDOW_W / 2, WINDOW_H / 4) of the window before the vertical flip.
CAR_WINDOW_X, CAR_WINDOW_Y = WINDOW_W / 2, WINDOW_H / 4
# Gymnasium's indicator bar covers the bottom 5/40 of the window: output rows 84..95.
BAR_TOP_WINDOW = WINDOW_H - 5 * WINDOW_H / 40
WORLD_ROWS = round(BAR_TOP_WINDOW * Y_SCALE)  # 84 rows show the world
# Impulses of a piece's end land up to 2 columns right of it; columns >= STATE_W are discarded.
PLANE_COLS = STATE_W + 3

# Coverage planes. Grass, road and the background quad cover the whole frame; the car's planes
# only the rows around the car.
GRASS, ROAD, ROAD_RED, ROAD_GREEN_BLUE, BACKGROUND, WHEEL, WHEEL_STRIPE, HULL = range(8)
FRAME_PLANES = slice(GRASS, BACKGROUND + 1)
CAR_PLANES = slice(WHEEL, HULL + 1)

HULL_COLOR = np.array([204.0, 0.0, 0.0])  # int(255 * (0.8, 0, 0)), as Car.draw
WHEEL_STRIPE_GREY = float(car_dynamics.WHEEL_WHITE[0])  # wheels are black, stripes (77, 77, 77)


def _world_quads(polygons) -> np.ndarray:
    return np.asarray(polygons, dtype=np.float64) * car_dynamics.SIZE


# The hull's four fixtures; the octagon HULL_POLY3 is cut into three quads (horizontal slabs of a
# convex polygon) so that every polygon we draw is a quad. The parts overlap, which the hull's
# coverage handles by saturating at 1 (they have one colour).
_H3 = car_dynamics.HULL_POLY3
HULL_QUADS = _world_quads(
    [
        car_dynamics.HULL_POLY1,
        car_dynamics.HULL_POLY2,
        [_H3[0], _H3[1], _H3[6], _H3[7]],
        [_H3[1], _H3[2], _H3[5], _H3[6]],
        [_H3[2], _H3[3], _H3[4], _H3[5]],
        car_dynamics.HULL_POLY4,
    ]
)
WHEEL_W, WHEEL_R = car_dynamics.WHEEL_W * car_dynamics.SIZE, car_dynamics.WHEEL_R * car_dynamics.SIZE
WHEEL_QUAD = np.array([(-WHEEL_W, WHEEL_R), (WHEEL_W, WHEEL_R), (WHEEL_W, -WHEEL_R), (-WHEEL_W, -WHEEL_R)])

# Gymnasium's grass: GRASS_DIM squares at every other lattice cell in both directions, and the
# background quad (the whole playfield; outside it the window stays black).
GRASS_QUADS = np.array(
    [
        [(GRASS_DIM * (x + 1), GRASS_DIM * y), (GRASS_DIM * x, GRASS_DIM * y),
         (GRASS_DIM * x, GRASS_DIM * (y + 1)), (GRASS_DIM * (x + 1), GRASS_DIM * (y + 1))]
        for x in range(-20, 20, 2)
        for y in range(-20, 20, 2)
    ]
)
BACKGROUND_QUAD = np.array([[(PLAYFIELD, PLAYFIELD), (PLAYFIELD, -PLAYFIELD), (-PLAYFIELD, -PLAYFIELD), (-PLAYFIELD, PLAYFIELD)]])

# The indicator bar, in gymnasium's window units after the flip (`CarRacing._render_indicators`).
BAR_S, BAR_H = WINDOW_W / 40.0, WINDOW_H / 40.0
INDICATOR_COLORS = np.array(
    [(255, 255, 255), (0, 0, 255), (0, 0, 255), (51, 0, 255), (51, 0, 255), (0, 255, 0), (255, 0, 0)], dtype=np.float64
)
VERTICAL_INDICATOR_PLACES = np.array([5.0, 7.0, 8.0, 9.0, 10.0])  # speed, then the four ABS sensors
STEERING_PLACE, GYRO_PLACE = 20.0, 30.0
# The score text is centred at (60, WINDOW_H - 50), inside the first 12 output columns of the bar.
SCORE_CENTER = (60, WINDOW_H - WINDOW_H * 2.5 / 40.0)
SCORE_COLS = 12
SCORE_FONT_SIZE = 42


def camera_zoom(t: float, zoom: float) -> float:
    """Window pixels per world unit at time t: gymnasium zooms in from 0.1 to `zoom` during the first second."""
    return 0.1 * SCALE * max(1 - t, 0) + zoom * SCALE * min(t, 1)


def _bounding_circles(quads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    centers = quads.mean(axis=1)
    radii = np.linalg.norm(quads - centers[:, None, :], axis=2).max(axis=1)
    return centers, radii


GRASS_CENTERS, GRASS_RADII = _bounding_circles(GRASS_QUADS)


POLYGON_GROWTH = 0.0
SMOOTHSCALE_LOSS = 0.0


def grow_quads(quads: np.ndarray, distance: float) -> np.ndarray:
    """Move every edge of each convex quad outwards by `distance`."""
    edges = np.roll(quads, -1, axis=1) - quads
    x, y = quads[..., 0], quads[..., 1]
    orientation = np.sign((x * np.roll(y, -1, axis=1) - np.roll(x, -1, axis=1) * y).sum(axis=1))
    normals = np.stack([edges[..., 1], -edges[..., 0]], axis=2) * orientation[:, None, None]
    normals /= np.maximum(np.linalg.norm(normals, axis=2, keepdims=True), 1e-12)
    previous = np.roll(normals, 1, axis=1)
    return quads + distance * (previous + normals) / (1 + (previous * normals).sum(axis=2, keepdims=True))


def rasterize_coverage(quads: np.ndarray, planes: np.ndarray, weights: np.ndarray, n_planes: int, rows: int) -> np.ndarray:
    """Exact area coverage of quads in output-pixel coordinates (x right, y down).

    quads: (P, 4, 2) vertices, any orientation, non-self-intersecting.
    planes, weights: (P, K) the planes each quad adds to and with which weight (colour or 1).
    Returns (n_planes, rows, PLANE_COLS) second-order impulses; their double prefix sum along the
    last axis is sum(weight * covered area) per output pixel.
    """
    # Orientation: the area is positive when the polygon's left side runs down the frame; weight
    # each quad by that sign so its inside gets +coverage whichever way its vertices turn.
    x, y = quads[..., 0], quads[..., 1]
    x_next, y_next = np.roll(x, -1, axis=1), np.roll(y, -1, axis=1)
    orientation = np.sign((x_next * y - x * y_next).sum(axis=1))

    # Edges, each given top to bottom with +1 if it runs down the frame and -1 if up.
    x0, y0, x1, y1 = x.ravel(), y.ravel(), x_next.ravel(), y_next.ravel()
    runs_down = y1 > y0
    y_top, y_bottom = np.minimum(y0, y1), np.maximum(y0, y1)
    x_top = np.where(runs_down, x0, x1)
    slope = (np.where(runs_down, x1, x0) - x_top) / np.maximum(y_bottom - y_top, 1e-12)  # dx per row
    direction = np.where(runs_down, 1.0, -1.0) * np.repeat(orientation, 4)

    # Pieces: one per (edge, output row it crosses), rows clipped to the frame.
    first_row = np.clip(np.floor(y_top), 0, rows).astype(np.intp)
    n_rows = np.clip(np.ceil(y_bottom), 0, rows).astype(np.intp) - first_row
    edge = np.repeat(np.arange(len(n_rows)), n_rows)
    row = np.arange(len(edge)) + np.repeat(first_row - (np.cumsum(n_rows) - n_rows), n_rows)
    piece_top = np.maximum(y_top[edge], row)
    piece_bottom = np.minimum(y_bottom[edge], row + 1)
    dy = (piece_bottom - piece_top) * direction[edge]
    x_a = x_top[edge] + (piece_top - y_top[edge]) * slope[edge]
    x_b = x_a + (piece_bottom - piece_top) * slope[edge]

    # The area right of a piece, as a function of x, rises linearly (a ramp) between the piece's
    # leftmost and rightmost x: a ramp of slope +dy/width starting at the left end and one of
    # slope -dy/width starting at the right end (a vertical piece gets width 1e-6, i.e. a step).
    left = np.minimum(x_a, x_b)
    width = np.maximum(np.abs(x_b - x_a), 1e-6)
    ramp_x = np.stack([left, left + width])
    ramp_slope = np.stack([dy / width, -dy / width])
    # A unit ramp starting at x0 = m + f covers pixel m by a = (1-f)^2/2, pixel m+k by k + 1/2 - f:
    # second differences a, 3/2 - f - 2a, f + a - 1/2 at columns m, m+1, m+2. A ramp starting left
    # of the frame covers pixel j by j + 1/2 - x0: second differences 1/2 - x0, 1/2 + x0 at columns
    # 0, 1. A ramp starting right of the frame never reaches it (clamped to column STATE_W).
    ramp_x = np.minimum(ramp_x, STATE_W)
    column = np.floor(ramp_x)
    f = ramp_x - column
    a = 0.5 * (1 - f) ** 2
    outside = ramp_x < 0
    impulses = np.stack(
        [
            np.where(outside, 0.5 - ramp_x, a),
            np.where(outside, 0.5 + ramp_x, 1.5 - f - 2 * a),
            np.where(outside, 0.0, f + a - 0.5),
        ]
    ) * ramp_slope  # (3 impulses, 2 ramps, pieces)
    column = np.where(outside, 0, column).astype(np.intp) + np.arange(3)[:, None, None]

    # Scatter every (plane, row, column) impulse of every plane the quad draws on.
    quad = edge // 4
    index = row * PLANE_COLS + column  # (3, 2, pieces)
    flat_index = (index[..., None] + (planes[quad] * (rows * PLANE_COLS))[None, None]).ravel()
    flat_weight = (impulses[..., None] * weights[quad][None, None]).ravel()
    return np.bincount(flat_index, flat_weight, minlength=n_planes * rows * PLANE_COLS).reshape(n_planes, rows, PLANE_COLS)


def double_prefix_sum(impulses: np.ndarray) -> np.ndarray:
    """Coverage from second-order impulses along the last axis, cut to the frame width."""
    return np.cumsum(np.cumsum(impulses, axis=-1), axis=-1)[..., :STATE_W]


def rect_coverage(lo: np.ndarray, hi: np.ndarray, n: int) -> np.ndarray:
    """(K, n) overlap of the intervals [lo, hi) with the unit pixels [j, j + 1)."""
    j = np.arange(n)
    return np.clip(np.minimum(hi[:, None], j + 1) - np.maximum(lo[:, None], j), 0, 1)


@functools.lru_cache(maxsize=4096)
def score_patch(text: str) -> np.ndarray:
    """The bar's first SCORE_COLS output columns with gymnasium's score text, smooth-scaled by
    pygame exactly as the full window is (same scale factors, aligned pixel boundaries)."""
    if not pygame.font.get_init():
        pygame.font.init()
    font = pygame.font.Font(pygame.font.get_default_font(), SCORE_FONT_SIZE)
    width = round(SCORE_COLS / X_SCALE)
    height = round(WINDOW_H - BAR_TOP_WINDOW)
    patch = pygame.Surface((width, height))
    label = font.render(text, True, (255, 255, 255), (0, 0, 0))
    rect = label.get_rect()
    rect.center = (SCORE_CENTER[0], SCORE_CENTER[1] - BAR_TOP_WINDOW)
    patch.blit(label, rect)
    scaled = pygame.transform.smoothscale(patch, (SCORE_COLS, STATE_H - WORLD_ROWS))
    return pygame.surfarray.array3d(scaled).transpose(1, 0, 2).astype(np.float64)


class StateRenderer:
    """Renders gymnasium CarRacing's 96x96x3 uint8 state frame for one track and colour scheme."""

    def __init__(self, background_rgb, grass_rgb):
        self.background = np.asarray(background_rgb, dtype=np.float64)
        self.grass = np.asarray(grass_rgb, dtype=np.float64)
        self.road_quads = np.zeros((0, 4, 2))
        self.road_colors = np.zeros((0, 3))

    def set_track(self, road_poly: list, road_poly_colors: np.ndarray) -> None:
        """road_poly: gymnasium's list of (4 vertices, colour) road tiles and kerbs, in drawing order.
        road_poly_colors: (len(road_poly), 3) array the tiles' colours live in (a tile turns to the
        plain road colour when the car first touches it, so this array is read at every frame)."""
        self.road_quads = np.array([vertices for vertices, _ in road_poly], dtype=np.float64)
        self.road_colors = road_poly_colors
        self.road_centers, self.road_radii = _bounding_circles(self.road_quads)

    def render(self, car, zoom: float, reward: float) -> np.ndarray:
        """The state frame with the camera on `car` at `zoom` window pixels per world unit (see `camera_zoom`)."""
        # World -> output pixels: u = X_SCALE * (zoom * (R p)_x + CAR_WINDOW_X),
        # v = Y_SCALE * (WINDOW_H - (zoom * (R p)_y + CAR_WINDOW_Y)), p = w - car, R = rotation by -angle.
        angle = car.hull.angle
        car_position = np.array(car.hull.position)
        cos, sin = np.cos(angle), np.sin(angle)
        to_output = np.array([[X_SCALE * zoom * cos, X_SCALE * zoom * sin], [Y_SCALE * zoom * sin, -Y_SCALE * zoom * cos]])
        offset = np.array([X_SCALE * CAR_WINDOW_X, Y_SCALE * (WINDOW_H - CAR_WINDOW_Y)]) - to_output @ car_position

        # The visible world (window above the bar) is a rectangle of half-diagonal `view_radius`
        # around the window point (CAR_WINDOW_X, (WINDOW_H + BAR_TOP... ) mapped back to the world.
        view_half_w, view_half_h = WINDOW_W / 2, BAR_TOP_WINDOW / 2
        view_radius = np.hypot(view_half_w, view_half_h) / zoom
        ahead = (WINDOW_H - view_half_h - CAR_WINDOW_Y) / zoom  # view centre lies this far ahead of the car
        view_center = car_position + ahead * np.array([-sin, cos])

        road = np.flatnonzero(np.linalg.norm(self.road_centers - view_center, axis=1) <= view_radius + self.road_radii)
        grass = np.flatnonzero(np.linalg.norm(GRASS_CENTERS - view_center, axis=1) <= view_radius + GRASS_RADII)
        inside_playfield = np.abs(view_center).max() + view_radius < PLAYFIELD

        # Road tiles and kerbs: coverage, red and green(=blue: the road is grey, kerbs white or red).
        road_colors = np.floor(self.road_colors[road])  # gymnasium draws int(colour)
        quads = [self.road_quads[road], GRASS_QUADS[grass]]
        planes = [np.broadcast_to([ROAD, ROAD_RED, ROAD_GREEN_BLUE], (len(road), 3)), np.full((len(grass), 3), GRASS)]
        weights = [np.column_stack([np.ones(len(road)), road_colors[:, 0], road_colors[:, 1]]),
                   np.tile([1.0, 0.0, 0.0], (len(grass), 1))]
        if not inside_playfield:
            quads.append(BACKGROUND_QUAD)
            planes.append(np.full((1, 3), BACKGROUND))
            weights.append(np.array([[1.0, 0.0, 0.0]]))
        car_quads = self._car_quads(car)
        quads.append(car_quads)
        planes.append(np.broadcast_to(np.array([WHEEL] * 4 + [WHEEL_STRIPE] * (len(car_quads) - 10) + [HULL] * 6)[:, None], (len(car_quads), 3)))
        weights.append(np.tile([1.0, 0.0, 0.0], (len(car_quads), 1)))

        world_quads = grow_quads(np.concatenate(quads), POLYGON_GROWTH / zoom) @ to_output.T + offset
        impulses = rasterize_coverage(world_quads, np.concatenate(planes), np.concatenate(weights), HULL + 1, WORLD_ROWS)
        coverage = double_prefix_sum(impulses[FRAME_PLANES])
        frame = self._composite_world(coverage, inside_playfield)

        # The car: wheels, their stripes, then the hull over the band of rows it spans.
        car_v = world_quads[-len(car_quads):, :, 1]
        top, bottom = max(int(car_v.min()), 0), min(int(np.ceil(car_v.max())), WORLD_ROWS)
        if top < bottom:
            wheel, stripe, hull = double_prefix_sum(impulses[CAR_PLANES, top:bottom])
            band = frame[top:bottom]
            band *= (1 - wheel)[..., None]
            band += WHEEL_STRIPE_GREY * stripe[..., None]
            hull = np.minimum(hull, 1)[..., None]
            band *= 1 - hull
            band += hull * HULL_COLOR

        frame = self._draw_indicators(frame, car, reward)
        self.float_frame = frame
        return np.rint(np.clip(frame - SMOOTHSCALE_LOSS, 0, 255)).astype(np.uint8)

    def _car_quads(self, car) -> np.ndarray:
        """World quads of the 4 wheels, the visible wheel stripes and the 6 hull parts (drawing order)."""
        wheels = car.wheels
        positions = np.array([tuple(w.position) for w in wheels] + [tuple(car.hull.position)])
        angles = np.array([w.angle for w in wheels] + [car.hull.angle])
        # A wheel's white stripe spans the wheel's width between heights R cos(phase) and
        # R cos(phase + 1.2); the part of the turn where the sine is positive is clamped to +-R
        # (Car.draw), and the stripe is hidden when both sines are positive.
        phase = np.array([w.phase for w in wheels])
        sin1, sin2 = np.sin(phase), np.sin(phase + 1.2)
        cos1 = np.where(sin1 > 0, np.sign(np.cos(phase)), np.cos(phase))
        cos2 = np.where(sin2 > 0, np.sign(np.cos(phase + 1.2)), np.cos(phase + 1.2))
        shown = ~((sin1 > 0) & (sin2 > 0))
        stripe_y = np.stack([cos1, cos1, cos2, cos2], axis=1)[shown] * WHEEL_R
        stripes = np.stack([np.broadcast_to([-WHEEL_W, WHEEL_W, WHEEL_W, -WHEEL_W], stripe_y.shape), stripe_y], axis=2)
        local = np.concatenate([np.broadcast_to(WHEEL_QUAD, (4, 4, 2)), stripes, HULL_QUADS])
        body = np.concatenate([np.arange(4), np.flatnonzero(shown), np.full(len(HULL_QUADS), 4)])
        cos, sin = np.cos(angles[body])[:, None], np.sin(angles[body])[:, None]
        x, y = local[..., 0], local[..., 1]
        return np.stack([cos * x - sin * y, sin * x + cos * y], axis=2) + positions[body][:, None, :]

    def _composite_world(self, coverage: np.ndarray, inside_playfield: bool) -> np.ndarray:
        """Background, grass and road layers -> (STATE_H, STATE_W, 3) float frame (bar rows left black)."""
        grass, road, road_red, road_green_blue, background = coverage
        if inside_playfield:
            background = 1.0
        # Road tiles never overlap, but where the track passes over itself, blend rather than
        # add: the coverage saturates at 1 and the colours are averaged.
        road_excess = np.maximum(road, 1)
        road = road / road_excess
        ground = (1 - road)[..., None] * (np.multiply.outer(background, self.background) if not inside_playfield else self.background)
        ground = ground + (grass * (1 - road))[..., None] * (self.grass - self.background)
        frame = np.zeros((STATE_H, STATE_W, 3))
        frame[:WORLD_ROWS] = ground
        frame[:WORLD_ROWS, :, 0] += road_red / road_excess
        frame[:WORLD_ROWS, :, 1:] += (road_green_blue / road_excess)[..., None]
        return frame

    def _draw_indicators(self, frame: np.ndarray, car, reward: float) -> np.ndarray:
        """Gymnasium's `_render_indicators` and score text over the black bar (rows WORLD_ROWS..95)."""
        hull, wheels = car.hull, car.wheels
        velocity = hull.linearVelocity
        values = np.array(
            [np.hypot(velocity[0], velocity[1])] + [w.omega for w in wheels] + [wheels[0].joint.angle, hull.angularVelocity]
        )
        heights = values[:5] * np.array([0.02, 0.01, 0.01, 0.01, 0.01])  # in bar units h
        lengths = values[5:] * np.array([-10.0, -0.8])  # in bar units s
        # Vertical bars rise from H - h; horizontal ones extend right of their place, rows H-4h..H-2h.
        bottom = WINDOW_H - BAR_H
        x0 = np.concatenate([VERTICAL_INDICATOR_PLACES, [STEERING_PLACE, GYRO_PLACE]]) * BAR_S
        x1 = np.concatenate([VERTICAL_INDICATOR_PLACES + 1, [STEERING_PLACE, GYRO_PLACE] + lengths]) * BAR_S
        y0 = np.concatenate([bottom - BAR_H * heights, np.full(2, WINDOW_H - 4 * BAR_H)])
        y1 = np.concatenate([np.full(5, bottom), np.full(2, WINDOW_H - 2 * BAR_H)])
        shown = np.abs(values) > 1e-4
        cols = rect_coverage(np.minimum(x0, x1) * X_SCALE, np.maximum(x0, x1) * X_SCALE, STATE_W)
        rows = rect_coverage(np.minimum(y0, y1) * Y_SCALE, np.maximum(y0, y1) * Y_SCALE, STATE_H) * shown[:, None]
        top = min(WORLD_ROWS, int(rows.any(axis=0).argmax()))
        rows = rows[:, top:]
        covered = rows.T @ cols  # (rows, cols): indicators never overlap
        paint = np.einsum("kr,kc,kd->rcd", rows, cols, INDICATOR_COLORS)
        frame[top:] *= (1 - covered)[..., None]
        frame[top:] += paint
        frame[WORLD_ROWS:, :SCORE_COLS] = score_patch(f"{reward:04.0f}")
        return frame
