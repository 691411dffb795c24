"""CarRacing's state frame drawn directly at observation resolution, without pygame.

Gymnasium draws every road and grass polygon one by one on a 1000x800 window, flips it and
smooth-scales it to 96x96. `StateRenderer` computes the same 96x96 frame from the same polygons,
with array operations where a frame needs polygons rasterised and three small per-pixel kernels
compiled by numba for the work of every frame (docs/fast_render.md has the figures):

1. **Camera.** Gymnasium maps a world point w to the window as ``zoom * R(-car angle) (w - car) +
   (500, 200)``, flips the window vertically and scales it by (96/1000, 96/800). Composed, that is
   one affine map from the world straight to *output pixels*; nothing is drawn at window size.
2. **Ground texture (steady state).** After the first second the zoom is the task's, and the
   ground (background, grass, road, kerbs) only changes where the car visits a tile. The ground
   is kept as a texture in world axes, two cells per output pixel height, each texel the area
   average over a pixel-sized square (2x2 cells); a frame gathers, per output pixel, the texel
   nearest to its centre through the inverse camera map (`gather_texels`). Chunks of the
   texture are drawn when the view first reaches them, and the texels under a tile are redrawn
   when its colour changes.
3. **Exact-area rasterisation** draws the texture's cells and, during the zoom-in of the first
   second or when the view reaches past the playfield's edge, the frame itself. Smooth-scaling
   averages the window pixels under an output pixel, so an output pixel shows each polygon in
   proportion to the area of the pixel it covers; we compute those areas exactly, as font
   rasterisers do. Every polygon edge is cut into pieces, one per row it crosses; a piece of
   vertical extent ``dy`` adds ``dy`` to the coverage of all pixels to its right in that row (+ on
   the polygon's left side, - on its right side, so the two cancel outside the polygon). Within
   its own pixels a slanted piece adds a linear ramp instead of a step. A ramp is the double
   prefix sum of three impulses, so one `np.bincount` collects the impulses of every piece and a
   double prefix sum along the rows turns them into coverage planes. The grass checkerboard is a
   product of x and y intervals: its coverage of a cell is a product of two 1-D coverages.
4. **Compositing.** Gymnasium paints background, grass, road and kerbs, wheels, hull. Polygons of
   one layer do not overlap (neighbouring road tiles share an edge), so each layer is a coverage
   plane plus colour-weighted planes, and painting a layer over what is below is
   ``below * (1 - coverage) + colour``. The car (fixed in the view but for its wheels) is painted
   over the ground at 4x4 sample points per pixel, in its hull's frame (`paint_car`).
5. **Indicator bar.** The black bar and its bars are axis-aligned rectangles (exact coverage,
   `paint_indicators`); the score is gymnasium's own font, rendered once per distinct score text
   and cached.

Not modelled: pygame's fill rules (its polygons come out up to a window pixel, 0.1 output pixel,
larger) and where track tiles overlap each other (their coverage adds up); the texture's texel
is square and sampled at the nearest texel, while an output pixel is a rotated 0.64 x 0.51
(zoom 2.7) rectangle. The frames differ from gymnasium's by well under 1/255 per channel on
average after the 84x84 preprocessing (tests/test_fast_render.py bounds it by 4/255).
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np
import pygame
from gymnasium.envs.box2d import car_dynamics
from gymnasium.envs.box2d.car_racing import GRASS_DIM, PLAYFIELD, SCALE, STATE_H, STATE_W, WINDOW_H, WINDOW_W, ZOOM

# Bump whenever the frames change: anchor frames cached by another version are drawn again.
RENDERER_VERSION = 2

# Window pixels -> output pixels: the 1000x800 window is scaled anisotropically to 96x96.
X_SCALE = STATE_W / WINDOW_W  # 0.096
Y_SCALE = STATE_H / WINDOW_H  # 0.12
# The car sits at (WINDOW_W / 2, WINDOW_H / 4) of the window before the vertical flip.
CAR_WINDOW_X, CAR_WINDOW_Y = WINDOW_W / 2, WINDOW_H / 4
# Gymnasium's indicator bar covers the bottom 5/40 of the window: output rows 84..95.
BAR_TOP_WINDOW = WINDOW_H - 5 * WINDOW_H / 40
WORLD_ROWS = round(BAR_TOP_WINDOW * Y_SCALE)  # 84 rows show the world
# The car in output pixels; the visible world (the window above the bar) is a rectangle centred
# VIEW_AHEAD / zoom in front of the car, within a circle of radius VIEW_HALF_DIAGONAL / zoom.
CAR_OUTPUT = (X_SCALE * CAR_WINDOW_X, Y_SCALE * (WINDOW_H - CAR_WINDOW_Y))
VIEW_HALF_DIAGONAL = math.hypot(WINDOW_W / 2, BAR_TOP_WINDOW / 2)
VIEW_AHEAD = WINDOW_H - BAR_TOP_WINDOW / 2 - CAR_WINDOW_Y

# Ground texture (see `StateRenderer.sample_texture`): texels per output pixel height at the steady
# zoom, and texels per side of the square chunks it is drawn in.
TEXELS_PER_PIXEL = 2
CHUNK = 64
VIEW_CORNERS = ((0, 0), (STATE_W, 0), (0, WORLD_ROWS), (STATE_W, WORLD_ROWS))
# The car's coverage: sample points per pixel along each axis.
CAR_SAMPLES = 4

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

# Coverage planes; they span the world rows of the frame (the background plane is only needed when
# the view reaches past the playfield).
GRASS, ROAD, ROAD_RED, ROAD_GREEN_BLUE, BACKGROUND = range(5)
GROUND_PLANE_SIZE = WORLD_ROWS * PLANE_COLS

# The car's layers in drawing order, and their colours as painted (see SMOOTHSCALE_SHIFT): wheels
# black, their stripes (77, 77, 77), the hull int(255 * (0.8, 0, 0)) as Car.draw.
CAR_PAINT = np.array([car_dynamics.WHEEL_COLOR, car_dynamics.WHEEL_WHITE, (204, 0, 0)], dtype=np.float64) + SMOOTHSCALE_SHIFT


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
GRASS_QUADS = (
    np.array(
        [[(x + 1, y), (x, y), (x, y + 1), (x + 1, y + 1)] for x in range(-20, 20, 2) for y in range(-20, 20, 2)],
        dtype=np.float64,
    )
    * GRASS_DIM
)
# The background is one quad over the whole playfield; outside it the window stays black.
BACKGROUND_QUAD = np.array([[(1, 1), (1, -1), (-1, -1), (-1, 1)]], dtype=np.float64) * PLAYFIELD

# The car in its hull's body frame (world units, y pointing forward). The camera follows the hull's
# position and angle, so at a given zoom the hull covers the same output pixels in every frame; the
# wheels are placed relative to it. The hull is its four fixtures, the octagon HULL_POLY3 cut into
# three slabs: six convex quads that overlap and share one colour (the hull's coverage is their
# union's). A wheel is the rectangle |x| < WHEEL_W, |y| < WHEEL_R in its own body frame.
WHEEL_W, WHEEL_R = car_dynamics.WHEEL_W * car_dynamics.SIZE, car_dynamics.WHEEL_R * car_dynamics.SIZE
_H3 = car_dynamics.HULL_POLY3
HULL_QUADS = (
    np.array(
        [
            car_dynamics.HULL_POLY1,
            car_dynamics.HULL_POLY2,
            (_H3[0], _H3[1], _H3[6], _H3[7]),
            (_H3[1], _H3[2], _H3[5], _H3[6]),
            (_H3[2], _H3[3], _H3[4], _H3[5]),
            car_dynamics.HULL_POLY4,
        ],
        dtype=np.float64,
    )
    * car_dynamics.SIZE
)
# The car's reach in the hull frame: the hull, and every wheel turned any way around its mount point.
_WHEEL_MOUNTS = np.array(car_dynamics.WHEELPOS, dtype=np.float64) * car_dynamics.SIZE
_WHEEL_REACH = math.hypot(WHEEL_W, WHEEL_R)
CAR_REACH_X = max(np.abs(HULL_QUADS[..., 0]).max(), np.abs(_WHEEL_MOUNTS[:, 0]).max() + _WHEEL_REACH)
CAR_REACH_Y = (
    min(HULL_QUADS[..., 1].min(), _WHEEL_MOUNTS[:, 1].min() - _WHEEL_REACH),
    max(HULL_QUADS[..., 1].max(), _WHEEL_MOUNTS[:, 1].max() + _WHEEL_REACH),
)


def convex_half_planes(quads: np.ndarray) -> np.ndarray:
    """(Q, 4, 2) convex quads -> (Q * 4, 3) rows (a, b, c): a point (x, y) is inside quad q when
    a x + b y + c > 0 on all four of its rows (one per side, the interior on its positive side)."""
    orientation = np.sign(signed_area(quads))[:, None]  # +1 counter-clockwise
    start, end = quads, np.roll(quads, -1, axis=1)
    a = (start[..., 1] - end[..., 1]) * orientation
    b = (end[..., 0] - start[..., 0]) * orientation
    c = -(a * start[..., 0] + b * start[..., 1])
    return np.stack([a, b, c], axis=-1).reshape(-1, 3)


HULL_HALF_PLANES = convex_half_planes(HULL_QUADS)
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
INDICATOR_PAINT = INDICATOR_COLORS - 2  # smooth-scale's - 2
INDICATOR_VERTICAL = (True, True, True, True, True, False, False)
NO_INDICATOR = (0.0, 0.0, WINDOW_H, WINDOW_H)  # an indicator that is not drawn: an empty rectangle
WINDOW_TO_OUTPUT = np.array([X_SCALE, X_SCALE, Y_SCALE, Y_SCALE])
# The score text is centred at (60, H - 2.5h), within the bar's first 12 output columns.
SCORE_CENTER = (60, WINDOW_H - 2.5 * BAR_H)
SCORE_COLS = 12
SCORE_FONT_SIZE = 42


def camera_zoom(t: float, zoom: float) -> float:
    """Window pixels per world unit at time t: gymnasium zooms in from 0.1 to `zoom` during the first second."""
    return 0.1 * SCALE * max(1 - t, 0) + zoom * SCALE * min(t, 1)


def coverage_impulses(
    quads: np.ndarray,
    offsets: np.ndarray,
    weights: np.ndarray,
    n_colored: int,
    colors: np.ndarray,
    color_stride: int,
    size: int,
    rows: int = WORLD_ROWS,
    cols: int = STATE_W,
) -> np.ndarray:
    """Second-order impulses whose double prefix sum along each row is the exact area coverage.

    quads: (P, 4, 2) in pixels (x right, y down) of a (rows, cols) target: the frame's world rows
    (the defaults) or a block of the ground texture.
    Quad p adds `weights[p]` per unit of covered area to its plane, a (rows, cols + 3) block of
    the flat result whose row 0 starts at `offsets[p]`; weights are +1 for quads whose left side
    runs down the frame (negative `signed_area` in these coordinates), -1 for the others. The first
    `n_colored` quads (the road) also add weight * colors[p, k] to the planes k + 1 strides later.
    Returns the flat (size,) impulses.
    """
    stride = cols + 3  # a piece's impulses land up to 2 columns right of it
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
    # 0 and 1). A ramp starting right of the frame never reaches it (clamped to column `cols`).
    start = np.minimum(x_a, x_b)
    ramp_x = np.stack([start, start + width])
    step = np.maximum(-ramp_x, 0)
    ramp_x = np.minimum(ramp_x + step, cols)
    column = np.floor(ramp_x)
    f = ramp_x - column
    a = 0.5 * (1 - f) ** 2
    impulses = np.stack([a + step, 1.5 - f - 2 * a - step, f + a - 0.5])
    impulses[:, 1] *= -1  # the ramp from the right end is subtracted
    impulses *= dy_per_x  # (3 impulses, 2 ramps, pieces)

    # Scatter: (plane, row, column) -> flat index. Road pieces also go to the colour planes.
    quad = edge // 4
    index = row * stride + column.astype(np.intp) + np.arange(3)[:, None, None] + offsets[quad]
    n_colored_pieces = np.searchsorted(quad, n_colored)
    colored_index = index[..., :n_colored_pieces]
    colored_impulses = impulses[..., :n_colored_pieces]
    piece_colors = colors[quad[:n_colored_pieces]].T
    flat_index = np.concatenate(
        [index.ravel()] + [(colored_index + k * color_stride).ravel() for k in range(1, len(piece_colors) + 1)]
    )
    flat_weight = np.concatenate([impulses.ravel()] + [(colored_impulses * color).ravel() for color in piece_colors])
    return np.bincount(flat_index, flat_weight, minlength=size)


def double_prefix_sum(impulses: np.ndarray) -> np.ndarray:
    """(..., rows, PLANE_COLS) impulses -> (..., rows, STATE_W) float32 coverage, by a matrix product."""
    return impulses.astype(np.float32) @ DOUBLE_PREFIX_SUM


# Per-pixel kernels, compiled by numba (cached next to this file): the steady-state frame is a few
# thousand pixels of simple arithmetic, which plain loops do in microseconds where array operations
# would each cost more in overhead than in work.


@numba.njit(cache=True)
def gather_texels(texels: np.ndarray, texture_size: int, to_texel: np.ndarray, frame: np.ndarray) -> None:
    """frame[v, u] = texels[col + row * texture_size] for each pixel of the world rows, (col, row) the
    integer part of (u + 0.5, v + 0.5, 1) @ to_texel, a (3, 2) affine map (the texel nearest to the
    pixel's centre; all positive, so int() floors)."""
    for v in range(WORLD_ROWS):
        col_v = (v + 0.5) * to_texel[1, 0] + to_texel[2, 0]
        row_v = (v + 0.5) * to_texel[1, 1] + to_texel[2, 1]
        for u in range(STATE_W):
            texel = int(col_v + (u + 0.5) * to_texel[0, 0]) + int(row_v + (u + 0.5) * to_texel[0, 1]) * texture_size
            frame[v, u, 0] = texels[texel, 0]
            frame[v, u, 1] = texels[texel, 1]
            frame[v, u, 2] = texels[texel, 2]


@numba.njit(cache=True)
def stripe_extent(phase: float) -> tuple[float, float]:
    """Car.draw's white stripe on a wheel at this rotation phase: it spans the wheel's width between
    heights R cos(phase) and R cos(phase + 1.2) of the wheel's frame; where the sine is positive the
    height is clamped to +-R, and the stripe is hidden (here: made flat, which covers nothing) when
    both sines are positive. Returns (low, high)."""
    if math.sin(phase) > 0 and math.sin(phase + 1.2) > 0:
        return 0.0, 0.0
    end_0 = math.copysign(1.0, math.cos(phase)) if math.sin(phase) > 0 else math.cos(phase)
    end_1 = math.copysign(1.0, math.cos(phase + 1.2)) if math.sin(phase + 1.2) > 0 else math.cos(phase + 1.2)
    return WHEEL_R * min(end_0, end_1), WHEEL_R * max(end_0, end_1)


@numba.njit(cache=True)
def wheel_rectangles(hull_pose, wheel_poses) -> np.ndarray:
    """The four wheels then their four stripes as rectangles of the hull's frame, each as two affine
    maps of hull-frame points (x, y, 1), shape (8, 2, 3), both within (-1, 1) exactly inside it.

    hull_pose: (x, y, angle) of the hull; wheel_poses: (4, 4) (x, y, angle, phase) of each wheel. A
    wheel's mount point is R(-hull angle) (wheel position - hull position) and its turn the angle
    difference; a hull-frame point p is q = R(-turn) (p - mount) in the wheel's frame, where the
    wheel is |q_x| < WHEEL_W, |q_y| < WHEEL_R and its stripe |q_x| < WHEEL_W, low < q_y < high
    (`stripe_extent`): the maps are q_x / WHEEL_W and (q_y - centre) / half-height."""
    rectangles = np.empty((8, 2, 3))
    cos_h, sin_h = math.cos(hull_pose[2]), math.sin(hull_pose[2])
    for k in range(4):
        dx, dy = wheel_poses[k, 0] - hull_pose[0], wheel_poses[k, 1] - hull_pose[1]
        mount_x, mount_y = cos_h * dx + sin_h * dy, cos_h * dy - sin_h * dx
        cos_t, sin_t = math.cos(wheel_poses[k, 2] - hull_pose[2]), math.sin(wheel_poses[k, 2] - hull_pose[2])
        across = (cos_t, sin_t, -cos_t * mount_x - sin_t * mount_y)  # q_x as a map of (x, y, 1)
        along = (-sin_t, cos_t, sin_t * mount_x - cos_t * mount_y)  # q_y
        low, high = stripe_extent(wheel_poses[k, 3])
        half_height, middle = max((high - low) / 2, 1e-9), (high + low) / 2
        for i in range(3):
            rectangles[k, 0, i] = across[i] / WHEEL_W  # the wheel: q_x / W, q_y / R
            rectangles[k, 1, i] = along[i] / WHEEL_R
            rectangles[k + 4, 0, i] = across[i] / WHEEL_W  # its stripe: q_x / W, (q_y - middle) / half-height
            rectangles[k + 4, 1, i] = along[i] / half_height
        rectangles[k + 4, 1, 2] -= middle / half_height
        if high <= low:  # hidden: a map that is 2 everywhere holds no point
            rectangles[k + 4, 1, 0], rectangles[k + 4, 1, 1], rectangles[k + 4, 1, 2] = 0.0, 0.0, 2.0
    return rectangles


@numba.njit(cache=True)
def paint_car(frame, window, points, in_hull, hull_pose, wheel_poses) -> None:
    """Paint the car over the frame's pixels in window (left, top, right, bottom), sample by sample.

    points: (P, 2) the window's sample points in the hull's frame, CAR_SAMPLES^2 per pixel, pixel by
    pixel (row-major); in_hull: (P,) whether each is inside the hull; the wheels and stripes come
    from the poses (`wheel_rectangles`). A sample shows, in gymnasium's drawing order, the hull over
    a stripe over a wheel over the ground; a pixel is the mean of its samples."""
    rectangles = wheel_rectangles(hull_pose, wheel_poses)
    left, top, right, bottom = window
    samples = CAR_SAMPLES * CAR_SAMPLES
    s = 0
    for v in range(top, bottom):
        for u in range(left, right):
            ground = wheel = stripe = hull = 0  # samples showing each layer
            for _ in range(samples):
                if in_hull[s]:
                    hull += 1
                else:
                    x, y = points[s, 0], points[s, 1]
                    layer = 0  # 0 ground, 1 + k // 4: wheel or stripe (a stripe is over its wheel)
                    for k in range(8):
                        if (
                            abs(rectangles[k, 0, 0] * x + rectangles[k, 0, 1] * y + rectangles[k, 0, 2]) < 1
                            and abs(rectangles[k, 1, 0] * x + rectangles[k, 1, 1] * y + rectangles[k, 1, 2]) < 1
                        ):
                            layer = max(layer, 1 + k // 4)
                    if layer == 0:
                        ground += 1
                    elif layer == 1:
                        wheel += 1
                    else:
                        stripe += 1
                s += 1
            for c in range(3):
                value = (
                    (frame[v, u, c] + 0.5) * ground
                    + wheel * CAR_PAINT[0, c]
                    + stripe * CAR_PAINT[1, c]
                    + hull * CAR_PAINT[2, c]
                )
                frame[v, u, c] = max(value / samples, 0.0)


@numba.njit(cache=True)
def paint_indicators(frame, rectangles, paints) -> None:
    """Paint axis-aligned, non-overlapping rectangles (K, 4) = (left, right, top, bottom) in output
    pixels with colours paints (K, 3) (gymnasium's colour - 2), at their exact area coverage:
    pixel = below (1 - sum_k coverage_k) + sum_k coverage_k paint_k."""
    top = STATE_H
    for k in range(len(rectangles)):
        if rectangles[k, 1] > rectangles[k, 0] and rectangles[k, 3] > rectangles[k, 2]:
            top = min(top, max(int(rectangles[k, 2]), 0))
    covered = np.zeros((STATE_H - top, STATE_W))
    paint = np.zeros((STATE_H - top, STATE_W, 3))
    for k in range(len(rectangles)):
        left, right, upper, lower = rectangles[k, 0], rectangles[k, 1], rectangles[k, 2], rectangles[k, 3]
        for v in range(max(int(upper), 0), min(int(math.ceil(lower)), STATE_H)):
            height = min(lower, v + 1) - max(upper, v)
            for u in range(max(int(left), 0), min(int(math.ceil(right)), STATE_W)):
                coverage = height * (min(right, u + 1) - max(left, u))
                if coverage > 0:
                    covered[v - top, u] += coverage
                    for c in range(3):
                        paint[v - top, u, c] += coverage * paints[k, c]
    for v in range(top, STATE_H):
        for u in range(STATE_W):
            for c in range(3):
                value = frame[v, u, c] * (1 - covered[v - top, u]) + paint[v - top, u, c] + 0.5  # + 0.5: the cast rounds
                frame[v, u, c] = max(value, 0.0)


@functools.lru_cache(maxsize=256)  # the steady zoom and the zoom-in's 50 of a few tasks
def car_window(zoom: float) -> tuple[tuple[int, int, int, int], np.ndarray, np.ndarray]:
    """The output pixels the car can cover at this zoom, as a window (left, top, right, bottom), with
    CAR_SAMPLES x CAR_SAMPLES sample points per pixel (pixel by pixel, row-major) in the hull's frame,
    shape (P, 2), and whether each is inside the hull, shape (P,).

    Output pixel (u, v) is hull-frame point ((u - u_car) / (X_SCALE zoom), -(v - v_car) / (Y_SCALE zoom))
    (the inverse of `StateRenderer.render`'s camera map for a point w = car + R(angle) p)."""
    x_scale, y_scale = X_SCALE * zoom, Y_SCALE * zoom
    left = max(math.floor(CAR_OUTPUT[0] - x_scale * CAR_REACH_X), 0)
    right = min(math.ceil(CAR_OUTPUT[0] + x_scale * CAR_REACH_X), STATE_W)
    top = max(math.floor(CAR_OUTPUT[1] - y_scale * CAR_REACH_Y[1]), 0)
    bottom = min(math.ceil(CAR_OUTPUT[1] - y_scale * CAR_REACH_Y[0]), WORLD_ROWS)
    offsets = (np.arange(CAR_SAMPLES) + 0.5) / CAR_SAMPLES
    v, u, dv, du = np.meshgrid(np.arange(top, bottom), np.arange(left, right), offsets, offsets, indexing="ij")
    points = np.stack([((u + du).ravel() - CAR_OUTPUT[0]) / x_scale, (CAR_OUTPUT[1] - (v + dv).ravel()) / y_scale], axis=1)
    in_hull = (
        (points @ HULL_HALF_PLANES[:, :2].T + HULL_HALF_PLANES[:, 2]).reshape(-1, len(HULL_QUADS), 4).min(axis=2) > 0
    ).any(axis=1)
    return (left, top, right, bottom), points, in_hull


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
    return pygame.surfarray.array3d(scaled).transpose(1, 0, 2).copy()


class StateRenderer:
    """Gymnasium CarRacing's 96x96x3 uint8 state frame for one colour scheme, camera zoom and track."""

    def __init__(self, background_rgb, grass_rgb, zoom: float = ZOOM):
        """zoom: the task's camera zoom (gymnasium's ZOOM, or 1 for the far task); `render` samples the
        ground texture whenever the camera is at this zoom, i.e. after the first second."""
        self.background = np.asarray(background_rgb, dtype=np.float32)
        self.grass = np.asarray(grass_rgb, dtype=np.float32)
        # Ground colour mixing: RGB = sum over planes of plane * row (see `exact_ground`).
        self.ground_mix = np.array(
            [
                self.grass - self.background,  # GRASS plane (times 1 - road)
                self.background + SMOOTHSCALE_SHIFT,  # ROAD plane, replaced by 1 - road
                (1, 0, 0),  # ROAD_RED
                (0, 1, 1),  # ROAD_GREEN_BLUE
            ],
            dtype=np.float32,
        )

        # The ground texture: the playfield in world axes, on a grid of TEXELS_PER_PIXEL cells per
        # output pixel height at the steady zoom (k = 3.9 cells per world unit at zoom 2.7, 1.4 at
        # zoom 1) with a margin of one cell, rounded up to whole chunks. Cell (col, row) is world
        # x in origin + [col, col + 1) / k, y in origin + [row, row + 1) / k. Texel (col, row) is
        # the 2x2 cells from there, an output pixel's height square: it holds the exact area average
        # of background, grass and road over that square, as gymnasium's colour minus smooth-scale's
        # 2, rounded, in uint8 RGB: the frame's pixel values.
        self.texture_zoom = zoom * SCALE
        self.texels_per_unit = TEXELS_PER_PIXEL * Y_SCALE * self.texture_zoom
        self.texture_origin = -PLAYFIELD - 1 / self.texels_per_unit
        n_chunks = math.ceil((2 * PLAYFIELD * self.texels_per_unit + 2) / CHUNK)
        self.texture_size = n_chunks * CHUNK
        self.texture_limit = 2 * PLAYFIELD * self.texels_per_unit - 1  # the last texel inside the playfield
        # Zero pages cost nothing until written: only the chunks the car has seen take memory.
        self.texture = np.zeros((self.texture_size, self.texture_size, 3), dtype=np.uint8)
        self.texels = self.texture.reshape(-1, 3)  # texel (col, row) is row col + row * texture_size
        self.chunk_built = np.zeros((n_chunks, n_chunks), dtype=bool)
        # Grass is the checkerboard of GRASS_DIM squares (i, j), i and j even: the product of one set
        # of x intervals and one of y intervals, so a cell's grass coverage is the product of its
        # column's and its row's 1-D coverage (the same function along both axes). With cells
        # counted in squares from the playfield's edge, c = x / GRASS_DIM + 20, the grass length
        # below c is G(c) = (number of even squares below floor(c)) + (c - floor(c) if floor(c) is even).
        edges = np.clip(
            (self.texture_origin + np.arange(self.texture_size + 2) / self.texels_per_unit) / GRASS_DIM + 20, 0, 40
        )
        cell = np.floor(edges)
        grass_below = (cell + 1) // 2 + (edges - cell) * (cell % 2 == 0)
        self.grass_coverage = np.diff(grass_below) * self.texels_per_unit * GRASS_DIM  # per cell
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
        # The road in cell coordinates (an orientation-preserving map, unlike world -> output: the
        # signs flip) with bounding boxes; the texture is drawn chunk by chunk as the camera needs it.
        self.cell_quads = (road_quads - self.texture_origin) * self.texels_per_unit
        self.cell_lo, self.cell_hi = self.cell_quads.min(axis=1), self.cell_quads.max(axis=1)
        self.cell_signs = -self.ground_signs[: self.n_road]
        self.texture_colors = road_poly_colors.copy()  # the tile colours the texture shows
        self.texture_color_sum = self.texture_colors.sum()
        self.chunk_built[:] = False

    def render(self, car, zoom: float, reward: float) -> np.ndarray:
        """The state frame with the camera on `car`, `zoom` window pixels per world unit (`camera_zoom`)."""
        # World -> output pixels: (u, v) = to_output @ (w - car) + CAR_OUTPUT, from
        # u = X_SCALE * (zoom * (R p)_x + CAR_WINDOW_X), v = Y_SCALE * (WINDOW_H - zoom * (R p)_y - CAR_WINDOW_Y),
        # with p = w - car and R the rotation by -angle. Python scalars: cheaper than tiny arrays.
        hull = car.hull
        car_x, car_y = hull.position
        cos, sin = math.cos(hull.angle), math.sin(hull.angle)
        to_output = ((X_SCALE * zoom * cos, X_SCALE * zoom * sin), (Y_SCALE * zoom * sin, -Y_SCALE * zoom * cos))
        offset = tuple(c - row[0] * car_x - row[1] * car_y for c, row in zip(CAR_OUTPUT, to_output))

        frame = np.zeros((STATE_H, STATE_W, 3), dtype=np.uint8)  # the bar is black
        textured = False
        if zoom == self.texture_zoom:
            # Output -> texel (col, row): k (car + to_output^-1 ((u, v) - CAR_OUTPUT) - origin),
            # with to_output^-1 = [[cos / (X_SCALE zoom), sin / (Y_SCALE zoom)],
            # [sin / (X_SCALE zoom), -cos / (Y_SCALE zoom)]] (to_output is a rotation times a flip
            # and scale). Written as rows for (u, v, 1), i.e. transposed; texel (col, row) is
            # centred on cell corner (col + 1, row + 1): the nearest texel is the integer part - 0.5.
            k = self.texels_per_unit
            per_u = (k * cos / (X_SCALE * zoom), k * sin / (X_SCALE * zoom))
            per_v = (k * sin / (Y_SCALE * zoom), -k * cos / (Y_SCALE * zoom))
            shift = tuple(
                k * (position - self.texture_origin) - CAR_OUTPUT[0] * du - CAR_OUTPUT[1] * dv - 0.5
                for position, du, dv in zip((car_x, car_y), per_u, per_v)
            )
            textured = self.sample_texture(frame, (per_u, per_v, shift))
        if not textured:
            # The visible world (the window above the bar) is a rectangle centred `ahead` in front
            # of the car, within a circle of radius `view_radius`.
            view_radius, ahead = VIEW_HALF_DIAGONAL / zoom, VIEW_AHEAD / zoom
            view = (car_x - ahead * sin, car_y + ahead * cos, view_radius)
            self.exact_ground(frame, np.array(to_output), np.array(offset), view)
        self.draw_car(frame, car, zoom)
        self.draw_indicators(frame, car, reward)
        return frame

    def sample_texture(self, frame: np.ndarray, to_texel: tuple) -> bool:
        """The frame's world rows from the ground texture: per output pixel, the texel nearest to its
        centre. to_texel: rows (3, 2) such that (u, v, 1) @ to_texel has that texel's (col, row) as
        its integer part.
        Returns False, drawing nothing, when the view reaches past the playfield's edge."""
        (col_u, row_u), (col_v, row_v), (col_1, row_1) = to_texel
        cols = [col_u * u + col_v * v + col_1 for u, v in VIEW_CORNERS]
        rows = [row_u * u + row_v * v + row_1 for u, v in VIEW_CORNERS]
        # Texel c spans cells c and c + 1; the playfield spans cells 1 to 2 PLAYFIELD k (the margin).
        if min(cols + rows) < 1 or max(cols + rows) > self.texture_limit:
            return False
        # Draw the chunks the frame's bounding box needs, as one block (their bounding box).
        col_lo, col_hi = max(int(min(cols)) // CHUNK, 0), int(max(cols)) // CHUNK + 1
        row_lo, row_hi = max(int(min(rows)) // CHUNK, 0), int(max(rows)) // CHUNK + 1
        missing = ~self.chunk_built[row_lo:row_hi, col_lo:col_hi]
        if missing.any():
            rows, cols = np.flatnonzero(missing.any(axis=1)) + row_lo, np.flatnonzero(missing.any(axis=0)) + col_lo
            self.draw_texture(rows[0] * CHUNK, (rows[-1] + 1) * CHUNK, cols[0] * CHUNK, (cols[-1] + 1) * CHUNK)
            self.chunk_built[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = True
        # Tiles the car has visited since they were drawn: redraw the texels whose squares they
        # touch. A visited tile turns from road + (0, 2.55 or 5.1) to road: the colour sum drops.
        color_sum = self.road_colors.sum()
        if color_sum != self.texture_color_sum:
            for tile in np.flatnonzero((self.road_colors != self.texture_colors).any(axis=1)):
                col0, row0 = np.maximum(self.cell_lo[tile].astype(int) - 1, 0)
                col1, row1 = np.minimum(self.cell_hi[tile].astype(int) + 1, self.texture_size - 1)
                self.texture_colors[tile] = self.road_colors[tile]
                self.draw_texture(row0, row1, col0, col1)
            self.texture_color_sum = color_sum

        gather_texels(self.texels, self.texture_size, np.array(to_texel), frame)
        return True

    def draw_texture(self, row0: int, row1: int, col0: int, col1: int) -> None:
        """Draw texels [row0, row1) x [col0, col1) of the ground texture. The colour of each cell
        (exact coverage of the road tiles and kerbs, as in `exact_ground` with cumulative sums for
        the double prefix sum, and of the grass from its separable coverage), averaged over 2x2 cells."""
        rows, cols = row1 - row0 + 1, col1 - col0 + 1  # cells
        near = np.flatnonzero(
            (self.cell_lo < (col0 + cols, row0 + rows)).all(axis=1) & (self.cell_hi > (col0, row0)).all(axis=1)
        )
        plane_size = rows * (cols + 3)
        impulses = coverage_impulses(
            self.cell_quads[near] - (col0, row0),
            np.zeros(len(near), dtype=np.intp),
            self.cell_signs[near],
            len(near),
            np.floor(self.road_colors[near, :2]),  # gymnasium draws int(colour)
            plane_size,
            3 * plane_size,
            rows,
            cols,
        )
        road, red, green_blue = impulses.reshape(3, rows, cols + 3).cumsum(axis=2).cumsum(axis=2)[..., :cols, None]
        grass = np.outer(self.grass_coverage[row0 : row0 + rows], self.grass_coverage[col0 : col0 + cols])[..., None]
        rgb = (
            (self.background + grass * (self.grass - self.background)) * (1 - road) + red * (1, 0, 0) + green_blue * (0, 1, 1)
        )
        texels = (rgb[:-1, :-1] + rgb[1:, :-1] + rgb[:-1, 1:] + rgb[1:, 1:]) / 4
        self.texture[row0:row1, col0:col1] = np.clip(np.rint(texels - 2), 0, 255)  # smooth-scale's - 2

    def exact_ground(self, frame: np.ndarray, to_output: np.ndarray, offset: np.ndarray, view: tuple) -> None:
        """The frame's world rows by exact-area rasterisation of the visible ground quads (the zoom-in
        of the first second, and views past the playfield's edge, where the window shows black).
        view: (x, y, radius) of a circle around the visible world."""
        view_x, view_y, view_radius = view
        inside_playfield = max(abs(view_x), abs(view_y)) + view_radius < PLAYFIELD
        # Draw the quads whose bounding circles meet the view's circle.
        dx, dy, reach = self.ground_x - view_x, self.ground_y - view_y, self.ground_radii + view_radius
        visible = np.flatnonzero(dx * dx + dy * dy <= reach * reach)
        n_road = np.searchsorted(visible, self.n_road)
        # Quads: road tiles and kerbs (ROAD, plus their red and green = blue on the two planes after
        # it: the road is grey, kerbs white or red), grass (GRASS), then the background quad if the
        # view reaches past the playfield (BACKGROUND).
        n_ground = BACKGROUND if inside_playfield else BACKGROUND + 1
        quads = [self.ground_quads[visible] @ to_output.T + offset]
        offsets = [self.ground_planes[visible] * GROUND_PLANE_SIZE]
        weights = [self.ground_signs[visible]]
        if not inside_playfield:
            quads.append(BACKGROUND_QUAD @ to_output.T + offset)
            offsets.append([BACKGROUND * GROUND_PLANE_SIZE])
            weights.append(BACKGROUND_SIGN)
        road_colors = np.floor(self.road_colors[visible[:n_road], :2]) + SMOOTHSCALE_SHIFT  # gymnasium draws int(colour)
        impulses = coverage_impulses(
            np.concatenate(quads),
            np.concatenate(offsets),
            np.concatenate(weights),
            n_road,
            road_colors,
            GROUND_PLANE_SIZE,
            n_ground * GROUND_PLANE_SIZE,
        )
        # Ground planes -> RGB. With g = grass and r = road coverage the colour is
        # (background + g (grass - background)) (1 - r) + road colour: the planes
        # (g (1 - r), 1 - r, red, green-blue) times `ground_mix`.
        ground = double_prefix_sum(impulses.reshape(-1, ROW_BATCH, PLANE_COLS)).reshape(n_ground, WORLD_ROWS, STATE_W)
        uncovered = 1 - ground[ROAD]
        ground[GRASS] *= uncovered
        if not inside_playfield:
            uncovered *= ground[BACKGROUND]  # black outside the playfield
        ground[ROAD] = uncovered
        rgb = ground[:BACKGROUND].reshape(BACKGROUND, -1).T @ self.ground_mix
        frame[:WORLD_ROWS] = np.maximum(rgb, 0).reshape(WORLD_ROWS, STATE_W, 3)  # the cast truncates: rounds

    def draw_car(self, frame: np.ndarray, car, zoom: float) -> None:
        """Paint the car: wheels (black) with their stripes, then the hull, over the ground, sampled at
        CAR_SAMPLES x CAR_SAMPLES points per pixel of the window around the car (`car_window`, in the
        hull's frame; `paint_car`)."""
        window, points, in_hull = car_window(zoom)
        hull = car.hull
        hull_pose = np.array((*hull.position, hull.angle))
        wheel_poses = np.array([(*wheel.position, wheel.angle, wheel.phase) for wheel in car.wheels])
        paint_car(frame, window, points, in_hull, hull_pose, wheel_poses)

    @staticmethod
    def draw_indicators(frame: np.ndarray, car, reward: float) -> None:
        """Gymnasium's `_render_indicators` and score text over the black bar (rows WORLD_ROWS..95)."""
        hull, wheels = car.hull, car.wheels
        values = (math.hypot(*hull.linearVelocity), *(w.omega for w in wheels), wheels[0].joint.angle, hull.angularVelocity)
        # Rectangles (left, right, top, bottom) in window pixels; pygame fills a polygon's last
        # row and column too, hence the + 1. Gymnasium skips near-zero indicators.
        rects = []
        for value, place, scale, vertical in zip(values, INDICATOR_PLACES, INDICATOR_SCALES, INDICATOR_VERTICAL):
            extent = value * scale
            if abs(value) <= 1e-4:
                rects.append(NO_INDICATOR)
            elif vertical:
                y0, y1 = sorted((WINDOW_H - BAR_H - BAR_H * extent, WINDOW_H - BAR_H))
                rects.append((place * BAR_S, (place + 1) * BAR_S + 1, y0, y1 + 1))
            else:
                x0, x1 = sorted((place * BAR_S, (place + extent) * BAR_S))
                rects.append((x0, x1 + 1, WINDOW_H - 4 * BAR_H, WINDOW_H - 2 * BAR_H + 1))
        paint_indicators(frame, np.array(rects) * WINDOW_TO_OUTPUT, INDICATOR_PAINT)
        frame[WORLD_ROWS:, :SCORE_COLS] = score_patch(f"{reward:04.0f}")
