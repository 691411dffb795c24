"""Shared environments of the collection.

Importing this package registers ``ColorCarRacing-v0`` (see `envs.car_racing`), so that
``gym.make("ColorCarRacing-v0", bg_color="red", task="standard")`` works, also in vector envs.
Modules: `car_racing` (colour-variable CarRacing, reward variants and observation preprocessing),
`fast_render` (its default state renderer), `anchors` (parallel anchor frames for relative
representations), the meta-RL task families `bandit`, `tabular_mdp` and `gridworld`, and
`transfer_gridworld` (REPAINT's teacher/student gridworld).
"""

import gymnasium as gym

if "ColorCarRacing-v0" not in gym.registry:
    gym.register(id="ColorCarRacing-v0", entry_point="envs.car_racing:ColorCarRacing")
