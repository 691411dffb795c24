"""A trained DDQN agent against a PPO agent of the same anchor set: own and cross-algorithm stitched greedy returns, and
how often bf16 and fp32 forward passes pick the same greedy action.

    python benchmarks/ddqn_stitch_check.py runs/<ddqn_run>/agent.pt runs/<ppo_run>/agent.pt --episodes 3

Pairs (encoder -> controller), each played greedily on the encoder's colour and view with the controller's task and
the controller's action repeat (DDQN: metadata.args.action_repeat; PPO: 1), whole episodes on tracks 30000, 30001, ...
(R3L's stitching pi_B(E_A(x) E_A(A)^T), workshop paper eq. 5):

    DDQN -> DDQN (own), PPO -> DDQN, DDQN -> PPO, PPO -> PPO (own)

Precision agreement: during the DDQN agent's own episodes, every observation also goes through the networks under bf16
autocast; the fraction of steps with the same argmax is printed (the policy a bf16-trained or bf16-run agent follows).
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ddqn_relative as ddqn  # noqa: E402
import ppo_relative as ppo  # noqa: E402
from envs.checkpoint import load_agent_checkpoint  # noqa: E402


def ppo_agent(checkpoint: dict):
    metadata, saved = checkpoint["metadata"], checkpoint["metadata"]["args"]
    encoder = ppo.Encoder(
        metadata["frame_stack"],
        metadata["relative"],
        metadata["num_anchors"] or saved["num_anchors"],
        saved["anchor_ema"],
        metadata["anchor_standardize"],
    )
    policy = ppo.Policy(metadata["latent_dim"], metadata["num_actions"])
    encoder.load_state_dict(checkpoint["encoder"])
    policy.load_state_dict(checkpoint["policy"])
    return encoder, policy


@torch.no_grad()
def play(
    encoder,
    controller,
    metadata_enc: dict,
    metadata_ctl: dict,
    action_repeat: int,
    episodes: int,
    agreement: list | None = None,
) -> list[float]:
    args = ddqn.Args(
        bg_color=metadata_enc["bg_color"],
        view=metadata_enc["view"],
        task=metadata_ctl["task"],
        frame_stack=metadata_ctl["frame_stack"],
        action_repeat=action_repeat,
    )
    env = ddqn.make_env(args, patience=0)
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=30_000 + episode)
        done, total = False, 0.0
        while not done:
            x = torch.as_tensor(obs)[None]
            action = controller.greedy_action(encoder(x))
            if agreement is not None:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    agreement.append(bool(controller.greedy_action(encoder(x)) == action))
            obs, reward, terminated, truncated, _ = env.step(int(action.item()))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return returns


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ddqn_checkpoint")
    parser.add_argument("ppo_checkpoint")
    parser.add_argument("--episodes", type=int, default=3, help="tracks per pair")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ddqn_checkpoint, ppo_checkpoint = ddqn.load_checkpoint(args.ddqn_checkpoint), load_agent_checkpoint(args.ppo_checkpoint)
    dm, pm = ddqn_checkpoint["metadata"], ppo_checkpoint["metadata"]
    if (dm["anchor_set_id"], dm["latent_dim"]) != (pm["anchor_set_id"], pm["latent_dim"]):
        sys.exit(
            f"error: anchor set / latent size differ ({dm['anchor_set_id']}/{dm['latent_dim']} vs "
            f"{pm['anchor_set_id']}/{pm['latent_dim']}); accepted: two relative agents of the same anchor set"
        )
    ddqn_encoder, q_network = ddqn.agent_from_checkpoint(ddqn_checkpoint)
    ppo_encoder, ppo_policy = ppo_agent(ppo_checkpoint)
    repeat = dm["args"]["action_repeat"]
    agreement: list[bool] = []
    pairs = {
        "DDQN encoder -> DDQN Q-head (own)": play(ddqn_encoder, q_network, dm, dm, repeat, args.episodes, agreement),
        "PPO encoder -> DDQN Q-head": play(ppo_encoder, q_network, pm, dm, repeat, args.episodes),
        "DDQN encoder -> PPO policy": play(ddqn_encoder, ppo_policy, dm, pm, 1, args.episodes),
        "PPO encoder -> PPO policy (own)": play(ppo_encoder, ppo_policy, pm, pm, 1, args.episodes),
    }
    print(
        f"DDQN {args.ddqn_checkpoint} (step {dm['global_step']}), PPO {args.ppo_checkpoint} (step {pm['global_step']}), "
        f"anchor set {dm['anchor_set_id']}, {args.episodes} track{'s' if args.episodes > 1 else ''} from 30000"
    )
    for name, returns in pairs.items():
        print(f"{name:<36} return {np.mean(returns):7.1f} +- {np.std(returns):6.1f}   {[round(r, 1) for r in returns]}")
    print(
        f"bf16 vs fp32 greedy action agreement on the DDQN agent's own episodes: {np.mean(agreement):.4f} "
        f"({len(agreement)} steps)"
    )


if __name__ == "__main__":
    main()
