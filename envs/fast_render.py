"""CarRacing's state frame drawn directly at observation resolution, with arrays instead of pygame.

Gymnasium draws every road and grass polygon one by one on a 1000x800 window, flips it and
smooth-scales it to 96x96. `StateRenderer` computes the same 96x96 frame from the same polygons
with a few dozen array operations, several times faster (docs/fast_render.md has the figures):

1. **Camera.** Gymnasium maps a world point w to the window as ``zoom * R(-car angle) (w - car) +
   (500, 200)``, flips the window vertically and scales it by (96/1000, 96/800). Composed, that is
   one affine map from the world straight to *output pixels*; nothing is drawn at window size.
2. **Culling.** Road, kerb and grass polygons are fixed for an episode: one array of quads. A quad
   is drawn when its bounding circle meets the circle around the visible part of the frame.
3. **Exact-area rasterisation.** Smooth-scaling averages the window pixels under an output pixel,
   so an output pixel shows each polygon in proportion to the area of the pixel it covers. We
   compute those areas exactly, as font rasterisers do. Every polygon edge is cut into pieces, one
   per output row it crosses; a piece of vertical extent ``dy`` adds ``dy`` to the coverage of all
   pixels to its right in that row (+ on the polygon's left side, - on its right side, so the two
   cancel outside the polygon). Within its own pixels a slanted piece adds a linear ramp instead of
   a step. A ramp is the double prefix sum of three impulses, so one `np.bincount` collects the
   impulses of every piece and one matrix product with a triangular matrix (the double prefix sum
   along the rows) turns them into coverage planes.
4. **Compositing.** Gymnasium paints background, grass, road and kerbs, wheels, hull. Polygons of
   one layer do not overlap (neighbouring road tiles share an edge), so each layer is a coverage
   plane plus colour-weighted planes, and painting a layer over what is below is
   ``below * (1 - coverage) + colour``; the planes are mixed into RGB with one matrix product.
5. **Indicator bar.** The black bar and its bars are axis-aligned rectangles (exact coverage); the
   score is gymnasium's own font, rendered once per distinct score text and cached.

Not modelled: pygame's fill rules (its polygons come out up to a window pixel, 0.1 output pixel,
larger) and where track tiles overlap each other (their coverage adds up). The frames differ from
gymnasium's by ~0.2/255 per channel on average after the 84x84 preprocessing
(tests/test_fast_render.py bounds it by 4/255).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pygame
from gymnasium.envs.box2d import car_dynamics
from gymnasium.envs.box2d.car_racing import GRASS_DIM, PLAYFIELD, SCALE, STATE_H, STATE_W, WINDOW_H, WINDOW_W

# Window pixels -> output pixels: the 1000x800 window is scaled anisotropically to 96x96.
X_SCALE = STATE_W / WINDOW_W  # 0.096
Y_SCALE = STATE_H / WINDOW_H  # 0.12
# The car sits at (WINDOW_W / 2, WINDOW_H / 4) of the window before the vertical flip.
CAR_WINDOW_X, CAR_WINDOW_Y = WINDOW_W / 2, WINDOW_H / 4
# Gymnasium's indicator bar covers the bottom 5/40 of the window: output rows 84..95.
BAR_TOP_WINDOW = WINDOW_H - 5 * WINDOW_H / 40
WORLD_ROWS = round(BAR_TOP_WINDOW * Y_SCALE)  # 84 rows show the world
# A piece's impulses land up to 2 columns right of it; columns >= STATE_W are cut off afterwards.
PLANE_COLS = STATE_W + 3
# DOUBLE_PREFIX_SUM[i, j] = j - i + 1 for i <= j: impulses @ it is the double prefix sum along a row.
_i, _j = np.arange(PLANE_COLS)[:, None], np.arange(STATE_W)[None, :]
DOUBLE_PREFIX_SUM = np.maximum(_j - _i + 1, 0).astype(np.float32)
# The products go to BLAS in batches of 21 rows: each stays under OpenBLAS's threading threshold
# (rows * 99 * 96 < 262144), because threads slow such small products down on a busy machine.
ROW_BATCH = 21

# Pygame's smooth-scale truncates twice in fixed point: a uniform colour v comes out as v - 2.
# Every colour is drawn that much darker, plus 0.5 so that the final truncating cast rounds.
SMOOTHSCALE_SHIFT = -2.0 + 0.5

# Coverage planes. The ground planes span the world rows of the frame (the background plane is
# only needed when the view reaches past the playfield), the car planes only the rows of the car.
GRASS, ROAD, ROAD_RED, ROAD_GREEN_BLUE, BACKGROUND = range(5)
WHEEL, WHEEL_STRIPE, HULL = range(3)
GROUND_PLANE_SIZE = WORLD_ROWS * PLANE_COLS

HULL_COLOR = (204.0, 0.0, 0.0)  # int(255 * (0.8, 0, 0)), as Car.draw
WHEEL_STRIPE_GREY = float(car_dynamics.WHEEL_WHITE[0])  # wheels are black, stripes (77, 77, 77)


def signed_area(quads: np.ndarray) -> np.ndarray:
    """Shoelace area of each (4, 2) quad: positive when counter-clockwise with y up."""
    x, y = quads[..., 0], quads[..., 1]
    return 0.5 * (x * np.roll(y, -1, axis=-1) - np.roll(x, -1, axis=-1) * y).sum(axis=-1)


def quad_signs(world_quads: np.ndarray) -> np.ndarray:
    """+1 for quads counter-clockwise in the world, -1 for the others: the world -> output map flips
    orientation (the window's y axis points down), so the former have their left side running down
    the frame, which `coverage_impulses` counts as inside."""
    return np.sign(signed_area(world_quads))


def _bounding_circles(quads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    centers = quads.mean(axis=1)
    radii = np.linalg.norm(quads - centers[:, None, :], axis=2).max(axis=1)
    return centers, radii


# Gymnasium's grass: GRASS_DIM squares on every other lattice cell in both directions.
GRASS_QUADS = np.array(
    [
        [(x + 1, y), (x, y), (x, y + 1), (x + 1, y + 1)]
        for x in range(-20, 20, 2)
        for y in range(-20, 20, 2)
    ],
    dtype=np.float64,
) * GRASS_DIM
# The background is one quad over the whole playfield; outside it the window stays black.
BACKGROUND_QUAD = np.array([[(1, 1), (1, -1), (-1, -1), (-1, 1)]], dtype=np.float64) * PLAYFIELD

# The car in body coordinates, all quads: 4 wheels (one per wheel body) and the hull's four
# fixtures, with the octagon HULL_POLY3 cut into three horizontal slabs. The hull parts overlap;
# they share one colour, so the hull's coverage simply saturates at 1.
WHEEL_W, WHEEL_R = car_dynamics.WHEEL_W * car_dynamics.SIZE, car_dynamics.WHEEL_R * car_dynamics.SIZE
WHEEL_QUAD = np.array([(-WHEEL_W, WHEEL_R), (WHEEL_W, WHEEL_R), (WHEEL_W, -WHEEL_R), (-WHEEL_W, -WHEEL_R)])
_H3 = car_dynamics.HULL_POLY3
HULL_QUADS = np.array(
    [
        car_dynamics.HULL_POLY1,
        car_dynamics.HULL_POLY2,
        [_H3[0], _H3[1], _H3[6], _H3[7]],
        [_H3[1], _H3[2], _H3[5], _H3[6]],
        [_H3[2], _H3[3], _H3[4], _H3[5]],
        car_dynamics.HULL_POLY4,
    ],
    dtype=np.float64,
) * car_dynamics.SIZE

# All car quads in drawing order, the body each belongs to (wheels 0-3, hull 4) and its plane.
# The stripes' heights change with the wheels' phase; hidden stripes stay flat (no area).
STRIPE_TEMPLATE = np.array([(-WHEEL_W, 0.0), (WHEEL_W, 0.0), (WHEEL_W, 0.0), (-WHEEL_W, 0.0)])
CAR_LOCAL_QUADS = np.concatenate([np.tile(WHEEL_QUAD, (4, 1, 1)), np.tile(STRIPE_TEMPLATE, (4, 1, 1)), HULL_QUADS])
CAR_BODIES = np.array([0, 1, 2, 3, 0, 1, 2, 3] + [4] * len(HULL_QUADS))
CAR_PLANES = np.array([WHEEL] * 4 + [WHEEL_STRIPE] * 4 + [HULL] * len(HULL_QUADS))
# Stripes are built bottom-to-top in wheel coordinates: counter-clockwise.
CAR_SIGNS = np.concatenate([np.sign(signed_area(np.tile(WHEEL_QUAD, (4, 1, 1)))), np.ones(4), np.sign(signed_area(HULL_QUADS))])
BACKGROUND_SIGN = np.sign(signed_area(BACKGROUND_QUAD))

# The indicator bar, in window units after the flip (gymnasium's `CarRacing._render_indicators`):
# vertical bars (speed, four ABS sensors) rise from H - h, horizontal ones (steering, gyroscope)
# extend right of their place between H - 4h and H - 2h.
BAR_S, BAR_H = WINDOW_W / 40.0, WINDOW_H / 40.0
INDICATOR_PLACES = np.array([5.0, 7.0, 8.0, 9.0, 10.0, 20.0, 30.0])
INDICATOR_SCALES = np.array([0.02, 0.01, 0.01, 0.01, 0.01, -10.0, -0.8])
INDICATOR_COLORS = np.array(
    [(255, 255, 255), (0, 0, 255), (0, 0, 255), (51, 0, 255), (51, 0, 255), (0, 255, 0), (255, 0, 0)], dtype=np.float64
)
INDICATOR_PAINT = (INDICATOR_COLORS + SMOOTHSCALE_SHIFT).astype(np.float32)
# The score text is centred at (60, H - 2.5h), within the bar's first 12 output columns.
SCORE_CENTER = (60, WINDOW_H - 2.5 * BAR_H)
SCORE_COLS = 12
SCORE_FONT_SIZE = 42


def camera_zoom(t: float, zoom: float) -> float:
    """Window pixels per world unit at time t: gymnasium zooms in from 0.1 to `zoom` during the first second."""
    return 0.1 * SCALE * max(1 - t, 0) + zoom * SCALE * min(t, 1)


def coverage_impulses(
    quads: np.ndarray, offsets: np.ndarray, weights: np.ndarray, n_colored: int, colors: np.ndarray, color_stride: int, size: int
) -> np.ndarray:
    """Second-order impulses whose double prefix sum along each row is the exact area coverage.

    quads: (P, 4, 2) in output pixels (x right, y down); only rows 0..WORLD_ROWS-1 are drawn.
    Quad p adds `weights[p]` per unit of covered area to its plane, a (rows, PLANE_COLS) block of
    the flat result whose row 0 starts at `offsets[p]`; weights are +1 for quads whose left side
    runs down the frame (negative `signed_area` in these coordinates), -1 for the others. The first
    `n_colored` quads (the road) also add weight * colors[p, k] to the planes k + 1 strides later.
    Returns the flat (size,) impulses.
    """
    rows = WORLD_ROWS
    # Edges, one per quad side: start (x0, y0), end (x1, y1), dx per unit of y.
    x0, y0 = quads[..., 0].ravel(), quads[..., 1].ravel()
    ends = quads[:, (1, 2, 3, 0)]
    x1, y1 = ends[..., 0].ravel(), ends[..., 1].ravel()
    rise = y1 - y0
    slope = (x1 - x0) / np.where(rise == 0, 1.0, rise)  # horizontal edges cover nothing

    # Pieces: one per (edge, output row it crosses); rows outside the frame are skipped.
    first_row = np.maximum(np.floor(np.minimum(y0, y1)), 0).astype(np.intp)
    n_rows = np.maximum(np.minimum(np.ceil(np.maximum(y0, y1)), rows).astype(np.intp) - first_row, 0)
    edge = np.repeat(np.arange(len(n_rows)), n_rows)
    row = np.arange(len(edge)) + np.repeat(first_row - np.cumsum(n_rows) + n_rows, n_rows)
    x0, y0, y1, slope = np.stack([x0, y0, y1, slope])[:, edge]
    # The piece runs from y_a to y_b (signed: dy > 0 where the edge runs down the frame).
    y_a = np.minimum(np.maximum(y0, row), row + 1)
    y_b = np.minimum(np.maximum(y1, row), row + 1)
    x_a = x0 + (y_a - y0) * slope
    x_b = x0 + (y_b - y0) * slope
    width = np.maximum(np.abs(x_b - x_a), 1e-6)  # a vertical piece is a ramp of width 1e-6: a step
    dy_per_x = (y_b - y_a) * weights[edge // 4] / width

    # Within a row, the area to the right of a piece rises linearly from 0 at the piece's leftmost x
    # to dy at its rightmost x: a ramp of slope dy / width starting at the left end, minus one
    # starting at the right end. A unit ramp starting at x = m + f covers pixel m by
    # a = (1 - f)^2 / 2 and pixel m + k by k + 1/2 - f, i.e. second differences a, 3/2 - f - 2a,
    # f + a - 1/2 at columns m, m+1, m+2. A ramp starting at x < 0 covers pixel j by
    # j + 1/2 - x: the ramp starting at 0 plus a step of -x (second differences -x, x at columns
    # 0 and 1). A ramp starting right of the frame never reaches it (clamped to column STATE_W).
    start = np.minimum(x_a, x_b)
    ramp_x = np.stack([start, start + width])
    step = np.maximum(-ramp_x, 0)
    ramp_x = np.minimum(ramp_x + step, STATE_W)
    column = np.floor(ramp_x)
    f = ramp_x - column
    a = 0.5 * (1 - f) ** 2
    impulses = np.stack([a + step, 1.5 - f - 2 * a - step, f + a - 0.5])
    impulses[:, 1] *= -1  # the ramp from the right end is subtracted
    impulses *= dy_per_x  # (3 impulses, 2 ramps, pieces)

    # Scatter: (plane, row, column) -> flat index. Road pieces also go to the colour planes.
    quad = edge // 4
    index = row * PLANE_COLS + column.astype(np.intp) + np.arange(3)[:, None, None] + offsets[quad]
    n_colored_pieces = np.searchsorted(quad, n_colored)
    colored_index = index[..., :n_colored_pieces]
    colored_impulses = impulses[..., :n_colored_pieces]
    piece_colors = colors[quad[:n_colored_pieces]].T
    flat_index = np.concatenate([index.ravel()] + [(colored_index + k * color_stride).ravel() for k in range(1, len(piece_colors) + 1)])
    flat_weight = np.concatenate([impulses.ravel()] + [(colored_impulses * color).ravel() for color in piece_colors])
    return np.bincount(flat_index, flat_weight, minlength=size)


def double_prefix_sum(impulses: np.ndarray) -> np.ndarray:
    """(..., rows, PLANE_COLS) impulses -> (..., rows, STATE_W) float32 coverage, by a matrix product."""
    return impulses.astype(np.float32) @ DOUBLE_PREFIX_SUM


def interval_coverage(lo: np.ndarray, hi: np.ndarray, first: int, end: int) -> np.ndarray:
    """(K, end - first) float32 length of each interval [lo, hi) within the pixels [j, j + 1), first <= j < end."""
    j = np.arange(first, end)
    return np.maximum(np.minimum(hi[:, None], j + 1) - np.maximum(lo[:, None], j), 0).astype(np.float32)


@functools.lru_cache(maxsize=4096)
def score_patch(text: str) -> np.ndarray:
    """The bar's first SCORE_COLS output columns showing `text`: gymnasium's font on a black patch,
    smooth-scaled by pygame with the full window's scale factors (the pixel boundaries align)."""
    if not pygame.font.get_init():
        pygame.font.init()
    font = pygame.font.Font(pygame.font.get_default_font(), SCORE_FONT_SIZE)
    patch = pygame.Surface((round(SCORE_COLS / X_SCALE), round(WINDOW_H - BAR_TOP_WINDOW)))
    label = font.render(text, True, (255, 255, 255), (0, 0, 0))
    rect = label.get_rect()
    rect.center = (SCORE_CENTER[0], SCORE_CENTER[1] - BAR_TOP_WINDOW)
    patch.blit(label, rect)
    scaled = pygame.transform.smoothscale(patch, (SCORE_COLS, STATE_H - WORLD_ROWS))
    return pygame.surfarray.array3d(scaled).transpose(1, 0, 2).astype(np.float32) + 0.5  # already scaled: only round


class StateRenderer:
    """Gymnasium CarRacing's 96x96x3 uint8 state frame for one colour scheme and track."""

    def __init__(self, background_rgb, grass_rgb):
        background = np.asarray(background_rgb, dtype=np.float32)
        grass = np.asarray(grass_rgb, dtype=np.float32)
        # Ground colour mixing: RGB = sum over planes of plane * row (see `render`).
        self.ground_mix = np.array(
            [
                grass - background,  # GRASS plane (times 1 - road)
                background + SMOOTHSCALE_SHIFT,  # ROAD plane, replaced by 1 - road
                (1, 0, 0),  # ROAD_RED
                (0, 1, 1),  # ROAD_GREEN_BLUE
            ],
            dtype=np.float32,
        )
        self.car_mix = np.array([[WHEEL_STRIPE_GREY] * 3, HULL_COLOR], dtype=np.float32) + SMOOTHSCALE_SHIFT
        self.set_track([], np.zeros((0, 3)))

    def set_track(self, road_poly: list, road_poly_colors: np.ndarray) -> None:
        """road_poly: gymnasium's list of (4 vertices, colour) road tiles and kerbs, in drawing order.
        road_poly_colors: (len(road_poly), 3) array that holds the tiles' colours (a tile turns to the
        plain road colour when the car first touches it, so it is read at every frame)."""
        road_quads = np.array([vertices for vertices, _ in road_poly], dtype=np.float64).reshape(-1, 4, 2)
        self.n_road = len(road_quads)
        self.road_colors = road_poly_colors
        # Road quads first, then grass: the visible road quads are the first visible ones.
        self.ground_quads = np.concatenate([road_quads, GRASS_QUADS])
        centers, self.ground_radii = _bounding_circles(self.ground_quads)
        self.ground_x, self.ground_y = centers.T.copy()
        self.ground_planes = np.where(np.arange(len(self.ground_quads)) < self.n_road, ROAD, GRASS)
        self.ground_signs = quad_signs(self.ground_quads)

    def render(self, car, zoom: float, reward: float) -> np.ndarray:
        """The state frame with the camera on `car`, `zoom` window pixels per world unit (`camera_zoom`)."""
        # World -> output pixels: (u, v) = to_output @ (w - car) + (48, 72), from
        # u = X_SCALE * (zoom * (R p)_x + CAR_WINDOW_X), v = Y_SCALE * (WINDOW_H - zoom * (R p)_y - CAR_WINDOW_Y),
        # with p = w - car and R the rotation by -angle.
        hull = car.hull
        angle = hull.angle
        car_x, car_y = hull.position
        cos, sin = math.cos(angle), math.sin(angle)
        to_output = np.array([[X_SCALE * zoom * cos, X_SCALE * zoom * sin], [Y_SCALE * zoom * sin, -Y_SCALE * zoom * cos]])
        offset = np.array([X_SCALE * CAR_WINDOW_X, Y_SCALE * (WINDOW_H - CAR_WINDOW_Y)]) - to_output @ (car_x, car_y)

        # The visible world (the window above the bar) is a rectangle centred `ahead` in front of
        # the car; draw the quads whose bounding circles meet its circumscribed circle.
        half_width, half_height = WINDOW_W / 2, BAR_TOP_WINDOW / 2
        view_radius = math.hypot(half_width, half_height) / zoom
        ahead = (WINDOW_H - half_height - CAR_WINDOW_Y) / zoom
        view_x, view_y = car_x - ahead * sin, car_y + ahead * cos
        dx, dy, reach = self.ground_x - view_x, self.ground_y - view_y, self.ground_radii + view_radius
        visible = np.flatnonzero(dx * dx + dy * dy <= reach * reach)
        n_road = np.searchsorted(visible, self.n_road)
        inside_playfield = max(abs(view_x), abs(view_y)) + view_radius < PLAYFIELD

        # Quads: road tiles and kerbs (ROAD, plus their red and green = blue on the two planes after
        # it: the road is grey, kerbs white or red), grass (GRASS), the background quad if the view
        # reaches past the playfield (BACKGROUND), then the car, whose planes only cover the rows
        # from `top` to `bottom`.
        car_output = self.car_quads(car) @ to_output.T + offset
        top = min(max(int(car_output[..., 1].min()), 0), WORLD_ROWS)
        bottom = max(min(int(car_output[..., 1].max()) + 1, WORLD_ROWS), top)
        n_ground = BACKGROUND if inside_playfield else BACKGROUND + 1
        ground_size = n_ground * GROUND_PLANE_SIZE
        car_plane_size = (bottom - top) * PLANE_COLS
        car_offsets = ground_size + CAR_PLANES * car_plane_size - top * PLANE_COLS
        quads = [self.ground_quads[visible] @ to_output.T + offset]
        offsets = [self.ground_planes[visible] * GROUND_PLANE_SIZE]
        weights = [self.ground_signs[visible]]
        if not inside_playfield:
            quads.append(BACKGROUND_QUAD @ to_output.T + offset)
            offsets.append([BACKGROUND * GROUND_PLANE_SIZE])
            weights.append(BACKGROUND_SIGN)
        road_colors = np.floor(self.road_colors[visible[:n_road], :2]) + SMOOTHSCALE_SHIFT  # gymnasium draws int(colour)
        impulses = coverage_impulses(
            np.concatenate([*quads, car_output]),
            np.concatenate([*offsets, car_offsets]),
            np.concatenate([*weights, CAR_SIGNS]),
            n_road,
            road_colors,
            GROUND_PLANE_SIZE,
            ground_size + 3 * car_plane_size,
        )

        # Ground planes -> RGB. With g = grass and r = road coverage the colour is
        # (background + g (grass - background)) (1 - r) + road colour: the planes
        # (g (1 - r), 1 - r, red, green-blue) times `ground_mix`.
        ground = double_prefix_sum(impulses[:ground_size].reshape(-1, ROW_BATCH, PLANE_COLS)).reshape(n_ground, WORLD_ROWS, STATE_W)
        uncovered = 1 - ground[ROAD]
        ground[GRASS] *= uncovered
        if not inside_playfield:
            uncovered *= ground[BACKGROUND]  # black outside the playfield
        ground[ROAD] = uncovered
        ground = ground[:BACKGROUND]

        # The car over the rows it spans: wheels (black) with their stripes, then the hull. The
        # hull's parts overlap, and share a colour: its coverage saturates at 1. The ground shows
        # through where neither covers it.
        if top < bottom:
            wheel, stripe, hull = double_prefix_sum(impulses[ground_size:].reshape(3, bottom - top, PLANE_COLS))
            hull = np.minimum(hull, 1)
            ground[:, top:bottom] *= (1 - wheel) * (1 - hull)
            car_colors = np.stack([stripe * (1 - hull), hull]).reshape(2, -1).T @ self.car_mix

        frame = np.empty((STATE_H, STATE_W, 3), dtype=np.float32)
        frame[:WORLD_ROWS] = (ground.reshape(BACKGROUND, -1).T @ self.ground_mix).reshape(WORLD_ROWS, STATE_W, 3)
        frame[WORLD_ROWS:] = 0  # the black bar
        if top < bottom:
            frame[top:bottom] += car_colors.reshape(bottom - top, STATE_W, 3)

        self.draw_indicators(frame, car, reward)
        return np.maximum(frame, 0).astype(np.uint8)

    @staticmethod
    def car_quads(car) -> np.ndarray:
        """World quads of the car, in CAR_PLANES order: wheels, wheel stripes, hull parts."""
        local = CAR_LOCAL_QUADS.copy()
        # Car.draw: a wheel's stripe spans the wheel's width between heights R cos(phase) and
        # R cos(phase + 1.2); where the sine is positive the height is clamped to +-R, and the
        # stripe is hidden (here: made flat) when both sines are positive.
        for k, wheel in enumerate(car.wheels):
            phases = (wheel.phase, wheel.phase + 1.2)
            if all(math.sin(phase) > 0 for phase in phases):
                continue
            ends = [math.copysign(1.0, math.cos(p)) if math.sin(p) > 0 else math.cos(p) for p in phases]
            low, high = WHEEL_R * min(ends), WHEEL_R * max(ends)
            local[4 + k, :, 1] = (low, low, high, high)
        # Body -> world: position + R(angle) @ local, per quad's body.
        poses = np.array([(*body.position, body.angle) for body in (*car.wheels, car.hull)])[CAR_BODIES]
        cos, sin = np.cos(poses[:, 2:]), np.sin(poses[:, 2:])
        x, y = local[..., 0], local[..., 1]
        return np.stack([poses[:, :1] + cos * x - sin * y, poses[:, 1:2] + sin * x + cos * y], axis=2)

    @staticmethod
    def draw_indicators(frame: np.ndarray, car, reward: float) -> None:
        """Gymnasium's `_render_indicators` and score text over the black bar (rows WORLD_ROWS..95)."""
        hull, wheels = car.hull, car.wheels
        values = (math.hypot(*hull.linearVelocity), *(w.omega for w in wheels), wheels[0].joint.angle, hull.angularVelocity)
        # Rectangles (left, right, top, bottom) in window pixels; pygame fills a polygon's last
        # row and column too, hence the + 1. Gymnasium skips near-zero indicators.
        rects, colors = [], []
        for k, (value, place, scale) in enumerate(zip(values, INDICATOR_PLACES, INDICATOR_SCALES)):
            if abs(value) > 1e-4:
                extent = value * scale
                if k < 5:  # vertical
                    y0, y1 = sorted((WINDOW_H - BAR_H - BAR_H * extent, WINDOW_H - BAR_H))
                    rects.append((place * BAR_S, (place + 1) * BAR_S + 1, y0, y1 + 1))
                else:  # horizontal
                    x0, x1 = sorted((place * BAR_S, (place + extent) * BAR_S))
                    rects.append((x0, x1 + 1, WINDOW_H - 4 * BAR_H, WINDOW_H - 2 * BAR_H + 1))
                colors.append(k)
        if rects:
            left, right, upper, lower = (np.array(rects) * (X_SCALE, X_SCALE, Y_SCALE, Y_SCALE)).T
            top = max(min(WORLD_ROWS, int(upper.min())), 0)
            cols = interval_coverage(left, right, 0, STATE_W)
            rows = interval_coverage(upper, lower, top, STATE_H)
            if top < WORLD_ROWS:  # an indicator reaches above the bar: paint over the world
                frame[top:] *= (1 - rows.T @ cols)[..., None]  # the indicators do not overlap
            paint = (rows[:, :, None] * INDICATOR_PAINT[colors][:, None, :]).reshape(len(rects), -1)
            frame[top:] += (paint.T @ cols).reshape(STATE_H - top, 3, STATE_W).transpose(0, 2, 1)
        frame[WORLD_ROWS:, :SCORE_COLS] = score_patch(f"{reward:04.0f}")
