"""Writes TF1 checkpoints the way TF1-era code did: a `tf.compat.v1` graph, trained a few steps in a
session, saved with `tf.compat.v1.train.Saver`. Run as a script in its own process
(`python tests/tf1_graph_checkpoints.py OUT`): `disable_eager_execution()` is global and would
change every other test of the session.

The graph has BN layers of each TF1 kind, so the names are the ones real files carry:

- `net/batch_normalization` and `net/batch_normalization_1`: `tf.compat.v1.layers.batch_normalization`
  (momentum 0.99), the second with gamma 0 in channel 1 after training (a pruned channel: BN006);
- `resnet/block1/conv1/BatchNorm`: named and updated as contrib/slim `batch_norm` does it (decay
  0.9), with its default `scale=False` (no gamma), and channel 2's moving variance 0 after
  training, as a dead unit leaves it (BN005). contrib is gone from TF 2, so it is written by hand;
- `resnet/block1/conv1/BatchNorm_1`: the same with gamma (`scale=True`), the `_1` a second call
  in the scope gets;
- `hand/bn` and variables outside any scope (the `root` layer): hand-written BN, moving
  statistics only, no gamma or beta.

Adam (slots `gamma/Adam`, `gamma/Adam_1`) trains it, `global_step` counts the steps, and an
ExponentialMovingAverage keeps shadows of every BN variable (`moving_mean/ExponentialMovingAverage`).

Written under OUT:

- `run_17/`: saved to the EMPTY prefix `run_17/` (`run_17/.index`, `run_17/.data-00000-of-00001`),
  its `checkpoint` state file then made to name `/home/someone/elsewhere/run_17/` as on the
  machine of the author who shipped it;
- `named/`: the same values saved to `named/model.ckpt-3` (`global_step=3`), as TF1 code did;
- `later/run_18/`: one step later (`global_step` 4, other statistics), saved to an empty prefix.
"""

from __future__ import annotations

import os
import sys

STEPS = 3
FOREIGN_STATE = "/home/someone/elsewhere/run_17/"


def _moments_bn(v1, x, scope: str, decay: float, gamma: bool, beta: bool):
    """BN with variables made by hand (contrib/slim names): normalise by the batch moments, update
    `moving = decay * moving + (1 - decay) * batch` as contrib's `assign_moving_average` does."""
    channels = int(x.shape[-1])
    with v1.variable_scope(scope):
        scale = v1.get_variable("gamma", [channels], initializer=v1.ones_initializer()) if gamma else None
        offset = v1.get_variable("beta", [channels], initializer=v1.zeros_initializer()) if beta else None
        moving_mean = v1.get_variable("moving_mean", [channels], initializer=v1.zeros_initializer(), trainable=False)
        moving_variance = v1.get_variable("moving_variance", [channels], initializer=v1.ones_initializer(),
                                          trainable=False)
    mean, variance = v1.nn.moments(x, list(range(len(x.shape) - 1)))
    for moving, batch in ((moving_mean, mean), (moving_variance, variance)):
        v1.add_to_collection(v1.GraphKeys.UPDATE_OPS, v1.assign(moving, decay * moving + (1 - decay) * batch))
    return v1.nn.batch_normalization(x, mean, variance, offset, scale, 1e-3)


def _root_bn(v1, x):
    """Hand-written BN whose `get_variable` calls are in no variable scope: `moving_mean` at the top."""
    channels = int(x.shape[-1])
    moving_mean = v1.get_variable("moving_mean", [channels], initializer=v1.zeros_initializer(), trainable=False)
    moving_variance = v1.get_variable("moving_variance", [channels], initializer=v1.ones_initializer(),
                                      trainable=False)
    mean, variance = v1.nn.moments(x, [0])
    for moving, batch in ((moving_mean, mean), (moving_variance, variance)):
        v1.add_to_collection(v1.GraphKeys.UPDATE_OPS, v1.assign(moving, 0.5 * moving + 0.5 * batch))
    return v1.nn.batch_normalization(x, mean, variance, None, None, 1e-3)


def main(out: str) -> None:
    import numpy as np
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    v1 = tf.compat.v1
    v1.set_random_seed(0)
    images = np.random.default_rng(0).normal(2.0, 3.0, (16, 6, 6, 3)).astype("float32")
    targets = np.random.default_rng(1).normal(size=(16, 2)).astype("float32")

    x = v1.placeholder(tf.float32, (None, 6, 6, 3))
    y = v1.placeholder(tf.float32, (None, 2))
    with v1.variable_scope("net"):
        h = v1.layers.conv2d(x, 4, 3, use_bias=False)
        h = tf.nn.relu(v1.layers.batch_normalization(h, training=True))
        h = v1.layers.conv2d(h, 4, 1, use_bias=False, name="conv2")
        h = v1.layers.batch_normalization(h, training=True)
    h = _moments_bn(v1, h, "resnet/block1/conv1/BatchNorm", 0.9, gamma=False, beta=True)
    h = _moments_bn(v1, tf.nn.relu(h), "resnet/block1/conv1/BatchNorm_1", 0.9, gamma=True, beta=True)
    h = _moments_bn(v1, h, "hand/bn", 0.9, gamma=False, beta=False)
    h = v1.layers.dense(tf.reduce_mean(h, axis=[1, 2]), 2, name="head")
    h = _root_bn(v1, h)
    loss = tf.reduce_mean(tf.square(h - y))

    step = v1.train.get_or_create_global_step()
    with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
        train = v1.train.AdamOptimizer(0.01).minimize(loss, global_step=step)
    bn_variables = [variable for variable in v1.global_variables()
                    if variable.op.name.rsplit("/", 1)[-1] in ("gamma", "beta", "moving_mean", "moving_variance")]
    ema = v1.train.ExponentialMovingAverage(0.5)
    with tf.control_dependencies([train]):
        train = ema.apply(bn_variables)

    def variable(name: str):
        (found,) = [candidate for candidate in v1.global_variables() if candidate.op.name == name]
        return found

    run_17, named, run_18 = (os.path.join(out, *parts) for parts in (("run_17",), ("named",), ("later", "run_18")))
    for directory in (run_17, named, run_18):
        os.makedirs(directory)
    saver = v1.train.Saver()
    with v1.Session() as session:
        session.run(v1.global_variables_initializer())
        for _ in range(STEPS):
            session.run(train, {x: images, y: targets})
        # A pruned channel and a dead unit's variance, after training as they come about in a real run.
        gamma = variable("net/batch_normalization_1/gamma")
        session.run(gamma.assign(session.run(gamma) * np.array([1, 0, 1, 1], np.float32)))
        dead = variable("resnet/block1/conv1/BatchNorm/moving_variance")
        session.run(dead.assign(session.run(dead) * np.array([1, 1, 0, 1], np.float32)))
        saver.save(session, run_17 + os.sep)
        saver.save(session, os.path.join(named, "model.ckpt"), global_step=step)
        session.run(train, {x: images, y: targets})
        saver.save(session, run_18 + os.sep)
    with open(os.path.join(run_17, "checkpoint"), "w") as state:
        state.write(f'model_checkpoint_path: "{FOREIGN_STATE}"\nall_model_checkpoint_paths: "{FOREIGN_STATE}"\n')


if __name__ == "__main__":
    main(sys.argv[1])
