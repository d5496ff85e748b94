"""The rule catalogue: every rule's code, name, severity, documentation and check, in one place.

`bninspect rules`, `bninspect explain`, the SARIF rule list and the README rules section are all
generated from RULES. Codes never change meaning: they are what users put in their config.

Layer: rules (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

from textwrap import dedent

from bninspect.findings import Severity
from bninspect.rules import graph, stats
from bninspect.rules.base import DYNAMIC, NEEDS_ARCHITECTURE, NEEDS_GRAPH, NEEDS_LAYER_CONFIG, Rule


def _text(text: str) -> str:
    return dedent(text).strip()


RULES: tuple[Rule, ...] = (
    Rule(
        code="BN001", name="untrained-moving-stats", severity=Severity.ERROR,
        summary="moving mean exactly 0 and moving variance exactly 1 in every channel: the statistics "
                "were never updated, the layer is ~identity at inference",
        what=_text("""
            Finds BatchNormalization layers whose moving mean is exactly 0 and moving variance exactly 1
            in every channel: the values the layer is created with (`moving_mean_initializer="zeros"`,
            `moving_variance_initializer="ones"`).
            """),
        why=_text("""
            At inference (`model.predict`, `model(x, training=False)`, serving) BatchNormalization does not
            use the statistics of the batch. It computes
            `gamma * (x - moving_mean) / sqrt(moving_variance + epsilon) + beta`, and with the initial
            statistics that is `gamma * x / sqrt(1 + epsilon) + beta`: almost the identity. The layer
            normalises nothing, and everything after it sees activations at whatever scale they come.

            The moving statistics are only updated by calls in training mode (`model.fit`, or
            `layer(x, training=True)`). A model that was never fit, that was trained with the layer
            frozen (`trainable=False` runs BatchNormalization in inference mode), or whose weights were
            silently not loaded keeps the initial values. The file saves and the model predicts; the
            numbers are just wrong.
            """),
        example=_text("""
            ```python
            model = keras.Sequential([
                keras.Input((32, 32, 3)),
                keras.layers.Conv2D(32, 3),
                keras.layers.BatchNormalization(),
                keras.layers.GlobalAveragePooling2D(),
                keras.layers.Dense(10),
            ])
            model.save("model.keras")  # never fit: moving_mean == 0, moving_variance == 1
            ```
            """),
        fix=_text("""
            Train the model with the layer trainable (`model.fit`), or recompute the statistics from
            representative data: `bninspect recalibrate model.keras --data sample.npy -o fixed.keras`.
            If the weights were loaded from elsewhere, check that every BatchNormalization layer got its
            weights (`load_weights(..., skip_mismatch=True)` skips layers without a word).
            """),
        hint="fit the model with this layer trainable, or run `bninspect recalibrate MODEL --data FILE -o OUT`",
        check=stats.untrained_moving_stats,
    ),
    Rule(
        code="BN002", name="untrained-affine", severity=Severity.WARNING,
        summary="gamma exactly 1 and beta exactly 0 everywhere while the statistics are trained and the "
                "layer is trainable",
        what=_text("""
            Finds trainable BatchNormalization layers whose gamma is exactly 1 and beta exactly 0 in every
            channel while the moving statistics were updated. Only the parameters that exist are looked
            at: `scale=False` removes gamma, `center=False` removes beta.
            """),
        why=_text("""
            The moving statistics move during any forward pass in training mode, but gamma and beta only
            move when an optimizer updates them. Untouched affine parameters in a trainable layer mean
            the optimizer never saw them: a custom training loop that leaves them out of the variables it
            updates, a learning rate of 0 for them, or statistics recalibrated on a model that was never
            trained. The layer then cannot scale or shift its channels, which the following layers were
            meant to rely on.
            """),
        example=_text("""
            ```python
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))  # updates the moving statistics
            variables = [v for v in model.trainable_variables if "batch_normalization" not in v.name]
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))  # gamma, beta untouched
            ```
            """),
        fix=_text("""
            Make sure gamma and beta are among the variables the optimizer updates
            (`model.trainable_variables`) and train again. If the layer should only standardise, build it
            with `center=False, scale=False`: the parameters disappear, and so does this finding.
            """),
        hint="train gamma and beta too (they must be in model.trainable_variables), or use center=False, scale=False",
        check=stats.untrained_affine,
    ),
    Rule(
        code="BN003", name="non-finite", severity=Severity.ERROR,
        summary="NaN or Inf in gamma, beta, moving mean or moving variance",
        what=_text("""
            Finds NaN or Inf values in gamma, beta, moving mean or moving variance.
            """),
        why=_text("""
            One NaN in the moving statistics makes that channel NaN for every input at inference, and the
            next layer that mixes channels spreads it to all of them. It usually comes from a training run
            that diverged (exploding loss, too high a learning rate, float16 overflow) and was saved
            anyway: `fit` updates the moving statistics from the batch even when the loss is NaN.
            """),
        example=_text("""
            ```python
            # saves after every epoch, also after the loss went NaN
            model.fit(x, y, epochs=50, callbacks=[keras.callbacks.ModelCheckpoint("last.keras")])
            ```
            """),
        fix=_text("""
            Go back to a checkpoint from before the divergence, add `keras.callbacks.TerminateOnNaN()`,
            lower the learning rate or clip gradients (`clipnorm=1.0`). If only the statistics are broken,
            recompute them with `bninspect recalibrate`.
            """),
        hint="restore a checkpoint from before training diverged; use keras.callbacks.TerminateOnNaN()",
        check=stats.non_finite,
    ),
    Rule(
        code="BN004", name="negative-variance", severity=Severity.ERROR,
        summary="a moving variance below 0",
        what=_text("""
            Finds channels whose moving variance is below 0.
            """),
        why=_text("""
            A variance cannot be negative, and training cannot make one: the moving variance is a moving
            average of batch variances, which are never negative. At inference
            `sqrt(moving_variance + epsilon)` is NaN once the variance is below `-epsilon`, and close to
            it the channel is multiplied by a huge factor. Negative values come from weights written by
            hand or by a converter: arrays in the wrong order, or a framework that stores something else
            (a standard deviation offset, a log variance).
            """),
        example=_text("""
            ```python
            # Keras' order is gamma, beta, moving_mean, moving_variance: mean and variance swapped here
            bn.set_weights([gamma, beta, running_var, running_mean])
            ```
            """),
        fix=_text("""
            Fix the conversion or edit that wrote the weights (Keras' order is gamma, beta, moving_mean,
            moving_variance, without gamma when `scale=False` and without beta when `center=False`), or
            recompute the statistics with `bninspect recalibrate`.
            """),
        hint="check the code that wrote these weights (order gamma, beta, moving_mean, moving_variance); recalibrate",
        check=stats.negative_variance,
    ),
    Rule(
        code="BN005", name="collapsed-variance", severity=Severity.WARNING,
        summary="channels whose moving variance is below epsilon and whose effective scale amplifies them "
                "at inference: (near-)constant inputs, often dead units upstream (gamma ~ 0 channels are "
                "BN006, not this)",
        what=_text("""
            Finds channels whose moving variance is below epsilon (times the `collapsed-variance-factor`
            threshold, default 1) and whose effective scale `abs(gamma) / sqrt(moving_variance + epsilon)`
            is above the `collapsed-variance-scale` threshold (default 10). Without a config the Keras
            default epsilon 1e-3 is assumed. NaN and negative variances are left to BN003 and BN004.
            """),
        why=_text("""
            At inference a channel is multiplied by `gamma / sqrt(moving_variance + epsilon)`. With the
            variance below epsilon, epsilon sets the scale: the channel's small variations, and any input
            that differs from training, are amplified by up to `abs(gamma) / sqrt(epsilon)` (about 32x for
            gamma 1 and epsilon 1e-3, 316x for 1e-5). A variance near 0 means the layer's input was
            (nearly) constant during training: usually dead units upstream, such as a ReLU that never
            fires or a filter that collapsed to 0. They are wasted capacity.

            Training often sends the gamma of such channels to ~0 as well (stock DenseNet121 has channels
            with variance below epsilon and effective scale below 0.1). Their output is the constant beta:
            nothing is amplified, so they are not reported here (BN006 zero-gamma names the exact zeros).
            The default threshold 10 reports a collapsed channel once |gamma| is above about 0.3 at
            epsilon 1e-3, or above about 0.03 at PyTorch's epsilon 1e-5.
            """),
        example=_text("""
            ```python
            x = keras.layers.Conv2D(64, 3, activation="relu")(x)  # some filters never fire: always 0
            x = keras.layers.BatchNormalization()(x)              # their moving variance is ~0
            ```
            """),
        fix=_text("""
            Look at the channels (`bninspect MODEL --layer PATH` lists them one by one) and at what feeds
            them. Against dead ReLUs: a lower learning rate, another initialisation, LeakyReLU; or prune
            the channels. Constant input features are better removed before the model. On real data,
            `bninspect probe MODEL --data FILE` shows which channels are constant (BN104).
            """),
        hint="find out why these channels are constant (dead ReLUs, zero filters); prune them or fix training",
        check=stats.collapsed_variance,
    ),
    Rule(
        code="BN006", name="zero-gamma", severity=Severity.INFO,
        summary="channels with gamma ~ 0: the channel outputs a constant (prunable)",
        what=_text("""
            Finds channels whose |gamma| is at or below the `zero-gamma` threshold (default 1e-5).
            """),
        why=_text("""
            A channel's output is `gamma * normalised_input + beta`. With gamma ~ 0 it is the constant beta
            for every input: the channel carries no information. That is often on purpose (an L1 penalty
            on gamma to find prunable channels, or `gamma_initializer="zeros"` at the end of residual
            blocks), and such channels can be removed together with the filters that feed them.
            """),
        example=_text("""
            ```python
            # network slimming: the penalty drives the gamma of unneeded channels to 0
            keras.layers.BatchNormalization(gamma_regularizer=keras.regularizers.L1(1e-4))
            ```
            """),
        fix=_text("""
            Nothing is wrong by itself. To shrink the model, prune these channels and the filters that
            feed them, and fold beta into the next layer's bias. Zero-initialised gammas that are still
            exactly 0 belong to a block that was never trained.
            """),
        hint="the channel is constant: prune it (and the filters feeding it) to shrink the model",
        check=stats.zero_gamma,
    ),
    Rule(
        code="BN007", name="extreme-scale", severity=Severity.WARNING,
        summary="effective scale abs(gamma)/sqrt(var+eps) above a threshold (default 1e3)",
        what=_text("""
            Finds channels whose effective inference scale `abs(gamma) / sqrt(moving_variance + epsilon)`
            is above the `extreme-scale` threshold (default 1000).
            """),
        why=_text("""
            At inference BatchNormalization is the affine map `scale * (x - moving_mean) + beta` with that
            scale. Above 1000, any deviation of the input from the training distribution, and float
            rounding, is multiplied by more than 1000: small input noise changes the predictions, and
            float16 inference (largest value 65504) overflows. It comes from a tiny moving variance with a
            small epsilon, or from a large gamma.
            """),
        example=_text("""
            ```python
            # a channel with moving variance 1e-9: scale ~ 7000 * |gamma|
            keras.layers.BatchNormalization(epsilon=1e-8)
            ```
            """),
        fix=_text("""
            Use a larger epsilon (the Keras default is 1e-3), look for collapsed channels (BN005) and for
            why gamma grew (no weight decay on it), and recalibrate the statistics on representative data.
            """),
        hint="use a larger epsilon (Keras default 1e-3) and check the channels' moving variance",
        check=stats.extreme_scale,
    ),
    Rule(
        code="BN008", name="pytorch-momentum", severity=Severity.WARNING,
        summary="momentum below 0.5: Keras weights the OLD value by momentum (default 0.99); PyTorch's "
                "0.1 means the opposite",
        what=_text("""
            Finds BatchNormalization layers with momentum below the `min-momentum` threshold (default 0.5).
            """),
        why=_text("""
            Keras updates `moving = momentum * moving + (1 - momentum) * batch`: momentum weights the OLD
            value, default 0.99. PyTorch's momentum weights the NEW value, default 0.1. A `momentum=0.1`
            copied from PyTorch code makes the Keras moving statistics 90% the last batch: at inference
            the model uses the statistics of whatever batch came last in training, which are noisy, and
            biased when the last batches are small or not representative.
            """),
        example=_text("""
            ```python
            keras.layers.BatchNormalization(momentum=0.1)  # ported from torch.nn.BatchNorm2d(momentum=0.1)
            ```
            """),
        fix=_text("""
            Use `momentum = 1 - pytorch_momentum` (0.9 for PyTorch's 0.1), or Keras' default 0.99, and
            retrain or recalibrate the statistics.
            """),
        hint="Keras momentum is 1 - PyTorch momentum: use 0.9 for PyTorch's 0.1, or Keras' default 0.99",
        needs=NEEDS_LAYER_CONFIG,
        check=stats.pytorch_momentum,
    ),
    Rule(
        code="BN009", name="axis-mismatch", severity=Severity.WARNING,
        summary="the normalised axis is not the channel axis of the layer that feeds it (e.g. "
                "channels_first convolution with axis=-1), or it is the batch axis (error)",
        what=_text("""
            Finds BatchNormalization layers whose `axis` is not the channel axis of the layer that feeds
            them, e.g. a `Conv2D(data_format="channels_first")` followed by the default `axis=-1`, and
            (as an error) layers whose axis is the batch axis 0. The producer is found by following the
            graph back through layers that keep the layout (activations, dropout, merges). Where the rank
            or the data format is not known, the rule stays silent rather than guess.
            """),
        why=_text("""
            `axis` names the axis that is KEPT: the layer computes one mean and variance per index along
            it, reducing over every other axis. For channels_first images `(batch, channels, height,
            width)`, `axis=-1` keeps the width: one statistic per image column, mixing all channels.
            Per-channel normalisation does not happen, and the layer breaks on images of another width.
            `axis=0` keeps the batch axis: one statistic per position in the batch, which fails for any
            other batch size.
            """),
        example=_text("""
            ```python
            x = keras.layers.Conv2D(32, 3, data_format="channels_first")(x)  # (batch, 32, H, W)
            x = keras.layers.BatchNormalization()(x)  # axis=-1: one statistic per column of W
            ```
            """),
        fix=_text("""
            Use `keras.layers.BatchNormalization(axis=1)` after channels_first layers and `axis=-1` after
            channels_last ones, then retrain: the stored statistics have the wrong shape.
            """),
        hint="axis names the channel axis that is kept: axis=1 for channels_first, -1 for channels_last",
        needs=NEEDS_GRAPH,
        check=graph.axis_mismatch,
    ),
    Rule(
        code="BN010", name="bn-output-layer", severity=Severity.WARNING,
        summary="a BN layer produces a model output: at inference it applies stored statistics and does "
                "not standardise predictions",
        what=_text("""
            Finds BatchNormalization layers whose output is a model output (also inside nested models
            whose output is the model's output).
            """),
        why=_text("""
            "I put BatchNormalization last and `model.predict` is not normalized." In training the layer
            standardises each batch with that batch's statistics, so outputs look standardised during
            `fit`. At inference it applies the stored moving statistics,
            `gamma * (x - moving_mean) / sqrt(moving_variance + epsilon) + beta`: predictions are not
            standardised per batch, and with untrained statistics the layer is almost the identity. A
            final BatchNormalization also ties the output's mean and scale to beta and gamma.
            """),
        example=_text("""
            ```python
            model = keras.Sequential([
                keras.Input((16,)),
                keras.layers.Dense(10),
                keras.layers.BatchNormalization(),  # the model's output
            ])
            ```
            """),
        fix=_text("""
            End the model with the layer that makes the prediction (Dense with the activation the task
            needs). For standardised outputs, standardise the targets instead (and undo it after
            `predict`), or use LayerNormalization, which normalises each sample by its own statistics in
            training and inference alike.
            """),
        hint="end the model with the prediction layer; standardise targets or use LayerNormalization instead",
        needs=NEEDS_GRAPH,
        check=graph.bn_output_layer,
    ),
    Rule(
        code="BN011", name="redundant-bias", severity=Severity.INFO,
        summary="Conv/Dense with a bias and a linear activation feeds a centred BN directly: the mean "
                "subtraction cancels the bias (a built-in relu/elu between them means it does not)",
        what=_text("""
            Finds Conv/Dense/DepthwiseConv/SeparableConv layers with `use_bias=True` and a linear
            activation (none, or `activation="linear"`) whose output goes directly, and only, to centred
            (`center=True`) BatchNormalization layers normalising their channel axis.
            """),
        why=_text("""
            BatchNormalization subtracts the per-channel mean, which removes any constant per-channel
            bias, and beta adds a learnt offset back. The bias gets (almost) no gradient, costs parameters
            and memory, and with weight decay only drifts. Accuracy is not affected.

            Only a bias that reaches BatchNormalization unchanged is cancelled. A built-in activation
            (`Conv2D(64, 3, activation="relu")`) or an `Activation` layer in between acts after the bias:
            the bias moves the point where the ReLU cuts off, BatchNormalization cannot undo that, and
            removing the bias changes the model's outputs. Those layers are not reported.
            """),
        example=_text("""
            ```python
            x = keras.layers.Conv2D(64, 3)(x)  # use_bias=True by default, linear activation
            x = keras.layers.BatchNormalization()(x)
            ```
            """),
        fix=_text("""
            Build the layer before BatchNormalization without a bias:
            `keras.layers.Conv2D(64, 3, use_bias=False)`. The outputs stay the same: beta takes over the
            offset. Do not do this where an activation sits between the layer and BatchNormalization.
            """),
        hint="build the layer feeding BN with use_bias=False (same results, fewer parameters)",
        needs=NEEDS_GRAPH,
        check=graph.redundant_bias,
    ),
    Rule(
        code="BN012", name="dropout-before-bn", severity=Severity.WARNING,
        summary='Dropout feeds BN: the variance BN sees in training differs from inference ("variance shift")',
        what=_text("""
            Finds Dropout, SpatialDropout1D/2D/3D, GaussianDropout and AlphaDropout layers (rate above 0)
            that feed a BatchNormalization layer, directly or through activations.
            """),
        why=_text("""
            Dropout only acts in training. During `fit` BatchNormalization accumulates the statistics of
            dropped-out activations, whose variance differs from that of the full activations it gets at
            inference, when dropout is off. At inference it then normalises with the wrong variance, and
            the shift compounds through the layers that follow ("variance shift", Li et al. 2019,
            *Understanding the Disharmony between Dropout and Batch Normalization*).
            """),
        example=_text("""
            ```python
            x = keras.layers.Dropout(0.5)(x)
            x = keras.layers.BatchNormalization()(x)
            ```
            """),
        fix=_text("""
            Put Dropout after the last BatchNormalization (e.g. right before the classifier), or keep only
            one of the two. For an existing model, recomputing the statistics with dropout off
            (`bninspect recalibrate`) removes the shift.
            """),
        hint="move Dropout after the last BatchNormalization layer, or recalibrate the statistics",
        needs=NEEDS_GRAPH,
        check=graph.dropout_before_bn,
    ),
    Rule(
        code="BN013", name="frozen-bn", severity=Severity.INFO,
        summary="trainable=False: in TF 2 and Keras 3 the layer runs in inference mode even during fit",
        what=_text("""
            Finds BatchNormalization layers with `trainable=False`.
            """),
        why=_text("""
            Since TF 2.0 (tf.keras) and in Keras 3, `trainable=False` on BatchNormalization makes the layer
            run in inference mode even during `fit`: it normalises with the moving statistics and updates
            neither them nor gamma and beta. That is what fine-tuning a pretrained base wants, but it
            differs from older Keras, where a frozen layer still used batch statistics, and the statistics
            do not adapt to new data. A layer frozen from the start never trains its statistics (BN001).
            """),
        example=_text("""
            ```python
            base = keras.applications.ResNet50(include_top=False, weights="imagenet")
            base.trainable = False  # every BatchNormalization inside runs in inference mode
            ```
            """),
        fix=_text("""
            Nothing, if intended. To adapt the statistics to new data, unfreeze the layer and fine-tune with
            a low learning rate, or recompute the statistics on the new data (`bninspect recalibrate`).
            """),
        hint="intended for fine-tuning; to adapt the statistics to new data unfreeze it or recalibrate",
        needs=NEEDS_LAYER_CONFIG,
        check=stats.frozen_bn,
    ),
    Rule(
        code="BN014", name="partially-untrained", severity=Severity.WARNING,
        summary="some, not all, channels still hold exactly the initial statistics",
        what=_text("""
            Finds BatchNormalization layers in which some channels, but not all, have moving mean exactly
            0 and moving variance exactly 1.
            """),
        why=_text("""
            Training moves every channel's statistics at the first update; landing exactly on mean 0 and
            variance 1 again is practically impossible (even an always-zero channel decays towards variance
            0, not 1). Channels at the initial values were never written: model surgery that added channels
            with fresh weights, weights copied into a slice, a converter that filled missing channels with
            defaults. Those channels are almost the identity at inference.
            """),
        example=_text("""
            ```python
            # widening a layer: 16 new channels get the initial statistics
            new_bn.set_weights([gamma, beta, np.concatenate([mean, np.zeros(16)]),
                                np.concatenate([variance, np.ones(16)])])
            ```
            """),
        fix=_text("""
            Recompute the statistics on representative data (`bninspect recalibrate`), or fine-tune the
            model so every channel is updated.
            """),
        hint="recalibrate the statistics (`bninspect recalibrate`) or fine-tune so every channel is updated",
        check=stats.partially_untrained,
    ),
    Rule(
        code="BN015", name="config-unavailable", severity=Severity.INFO,
        summary="the file lacks the layer configs or the graph (weights-only file, or an architecture that is "
                "code): the rules that need them were skipped",
        what=_text("""
            Reports, once per file, what the file does not hold and the rules skipped for it. A weights-only
            file (`model.save_weights`: a `.weights.h5` or legacy HDF5 weights file) has no config at all.
            A model whose architecture is code (a subclassed model, a KerasHub backbone or task, in any
            format including a KerasHub preset directory) stores its class and constructor arguments
            instead of a layer graph: the graph rules (BN009-BN012) cannot run, and where the file also
            lacks the BN layers' own configs (`.keras`, presets; a tf-keras SavedModel has them) neither
            can the per-layer rules (BN008, BN013, BN016, BN018). A TF1 checkpoint
            (`tf.compat.v1.train.Saver`) holds the variables of a graph: its BN layers were made by graph
            code (`tf.compat.v1.layers`, contrib/slim `batch_norm`, by hand), which has no layer configs to
            save. Rules run wherever their inputs are known, so the list names only what was really skipped.
            """),
        why=_text("""
            Without the config bninspect does not know axis, momentum, trainable, dtype policy or how the
            layers connect, and assumes the Keras default epsilon 1e-3. Axis mismatches, BN output layers,
            dropout before BN, a PyTorch momentum and the like cannot be checked, so a clean report of such
            a file says less than one of a file with a layer graph.
            """),
        example=_text("""
            ```python
            model.save_weights("model.weights.h5")  # arrays only, no config
            keras_hub.models.ResNetImageClassifier(...).save("task.keras")  # a class, not a layer graph
            ```
            """),
        fix=_text("""
            For a weights-only file, check the full model file (`model.save("model.keras")`) as well. For a
            code architecture the configs are built by the class: building it with Keras gives the graph
            and every layer's config. For a TF1 checkpoint, check axis, epsilon and momentum (`decay` in
            contrib/slim) in the code that built the graph. Or ignore BN015 for such files.
            """),
        hint="check the full model file (model.save) to run every rule",
        check=None,  # reported by run_static_rules, which knows which rules it skipped
    ),
    Rule(
        code="BN016", name="fp16-epsilon", severity=Severity.WARNING,
        summary="the layer runs under a float16 dtype policy and epsilon is below 6.1e-5 (the smallest "
                "normal float16): var+eps can round to 0",
        what=_text("""
            Finds BatchNormalization layers under a float16 dtype policy (`mixed_float16` or `float16`,
            the layer's own or the model's, or weights stored as float16) whose epsilon is below 6.1e-5,
            the smallest normal float16 number.
            """),
        why=_text("""
            In float16, numbers below 6.1e-5 lose precision and below about 6e-8 they are 0. Keras itself
            computes BatchNormalization in float32 when given float16 inputs, but a model built for float16
            is usually also run in float16 elsewhere (TFLite float16, TensorRT or ONNX fp16 engines), where
            `moving_variance + epsilon` is computed in half precision: epsilon rounds away, and a channel
            with a small variance divides by (almost) zero, giving Inf and NaN. The Keras default 1e-3 is
            safe; the 1e-5 of models ported from PyTorch is not.
            """),
        example=_text("""
            ```python
            keras.mixed_precision.set_global_policy("mixed_float16")
            keras.layers.BatchNormalization(epsilon=1e-5)
            ```
            """),
        fix=_text("""
            Use an epsilon of at least 1e-4 (Keras' default 1e-3) in layers that may run in float16, or keep
            BatchNormalization in float32 (`dtype="float32"` on the layer).
            """),
        hint="use epsilon >= 1e-4 (Keras default 1e-3), or dtype='float32' for this layer",
        needs=NEEDS_LAYER_CONFIG,
        check=stats.fp16_epsilon,
    ),
    Rule(
        code="BN017", name="code-in-model", severity=Severity.INFO,
        summary="the config holds Lambda layers (code stored in the file, which loading the model with Keras "
                "runs) or custom classes (only named: loading needs them supplied, nothing from the file runs)",
        what=_text("""
            Finds two kinds of code a model needs besides Keras. Code the file STORES: Lambda layers
            with a Python function or lambda (marshalled bytecode), TorchModuleWrapper layers (a pickled
            PyTorch module), Python lambdas inside Keras 3 configs. And classes and functions the file
            only NAMES: layer classes that are not Keras' own, custom objects (activations,
            initializers, ...) inside layer configs, a Lambda of a named function in Keras 3; for a
            model whose architecture is code (a subclassed model), its class (`my_package>Net`) and the
            objects in its constructor arguments. The message and the hint say which kind a layer has.
            Keras 3 configs are judged by the module and registered name they record, Keras 2 configs by
            the class name. Classes of libraries that Keras loads by their registered names (keras_hub,
            keras_nlp, keras_cv) are not reported: loading them needs the library installed, not your
            code.
            """),
        why=_text("""
            Code stored in the file runs when the model is loaded. `keras.models.load_model` executes a
            Lambda's bytecode: Keras 3 (and tf.keras for `.keras` files) only with `safe_mode=False`,
            while tf.keras and Keras 2 run the Lambda of a legacy `.h5` without asking. A model file from
            an untrusted source with a Lambda can run anything.

            A class the file only names holds no code: the config records its name and constructor
            arguments. Keras fails to load the model (`Unknown layer: 'MyBlock'`) whatever `safe_mode`
            is, until you supply the class (`custom_objects`, or importing the module that registers it);
            then your code runs, nothing from the file. Such a model cannot be used without that code,
            which the file does not ship. bninspect's static commands only read JSON and arrays; `--data`
            loads the model with Keras and refuses stored code unless you pass `--unsafe`, and named
            classes unless `--custom-objects module.py` defines them.
            """),
        example=_text("""
            ```python
            x = keras.layers.Lambda(lambda t: t / 255.0)(inputs)  # bytecode stored in the file
            x = MyBlock(64)(x)  # the file stores "MyBlock" and its arguments, not its code
            ```
            """),
        fix=_text("""
            Replace Lambda layers with built-in ones (`keras.layers.Rescaling(1 / 255)`) or with a custom
            layer class, whose code is yours and stays out of the file; load files with stored code only
            if you trust them (`safe_mode=False`). For custom classes, ship the code that defines them
            with the model (a package that registers them with
            `@keras.saving.register_keras_serializable()`), and pass them to `load_model` as
            `custom_objects` or import that package before loading.
            """),
        hint="a Lambda runs code stored in the file (safe_mode=False, --unsafe): use built-in layers; a custom "
             "class is only named: supply it (custom_objects, --custom-objects)",
        needs=NEEDS_ARCHITECTURE,
        check=graph.code_in_model,
    ),
    Rule(
        code="BN018", name="unconverged-moving-stats", severity=Severity.WARNING,
        summary="the optimizer's step count in the file says `momentum ** steps` of the initial 0/1 is still "
                "in the moving statistics (above 5% by default), and the stored values are consistent with "
                "a run from those initial values",
        what=_text("""
            Reads the optimizer's step count that full-model files store (`optimizer.iterations`) and,
            for each trainable BatchNormalization layer whose statistics were updated (not BN001),
            computes the share `momentum ** steps` of the initial values (moving mean 0, moving variance
            1) that is still in the moving statistics. It reports the layer when that share is above
            `[tool.bninspect.thresholds] unconverged-share` (default 0.05). Weights-only files and
            models saved with `include_optimizer=False` have no step count: the rule does not run.
            Neither does it for a stored count of 0 while the statistics were updated: tf.keras
            2.12+ saves 0 for an optimizer that never ran (a model compiled again after training),
            which says nothing about the steps that trained the statistics.
            """),
        why=_text("""
            Keras updates the moving statistics once per training step, `moving = momentum * moving +
            (1 - momentum) * batch`, starting from mean 0 and variance 1. After N steps a fraction
            `momentum ** N` of those initial values is still in them: with the default momentum 0.99, 48
            steps leave 62% and 300 steps leave 5%. A model trained briefly (a small data set, a few
            epochs, a quick fine-tune) saves statistics that are mostly 0/1 and do not describe its data.
            `fit` and `evaluate` on batch statistics look fine, while `predict` on the moving
            statistics is wrong: "it works in fit, but predict is bad".

            To keep false alarms off, the rule checks that the stored values are consistent with a
            run from 0/1. Such a run leaves `moving_variance >= share` in every channel: the initial
            variance 1 contributes `share * 1` and the data a non-negative amount. A fine-tune with a
            fresh optimizer counts only its own steps while the layer started from pretrained
            statistics, not from 0/1; where some channel's variance is clearly below the share, the
            layer had statistics before these steps and BN018 stays silent. Layers with
            `trainable=False` are frozen (BN013) and never update, so they are not BN018.
            """),
        example=_text("""
            ```python
            model.compile("adam", "categorical_crossentropy")
            model.fit(x_small, y_small, batch_size=32, epochs=3)   # 3 epochs of 16 steps: 48 updates
            model.save("model.keras")   # 0.99 ** 48 = 62% of each moving statistic is still 0/1
            ```
            """),
        fix=_text("""
            Recompute the statistics from training data with `bninspect recalibrate MODEL --data FILE
            -o OUT` (a cumulative average: it does not depend on the number of steps), train longer, or
            use a lower momentum: `BatchNormalization(momentum=0.9)` needs about 30 steps to leave 5%
            of the initial values, 0.99 about 300.
            """),
        hint="recalibrate the statistics (`bninspect recalibrate MODEL --data FILE -o OUT`), train longer, "
             "or use a lower momentum (0.9 needs ~30 steps for 5%)",
        needs=NEEDS_LAYER_CONFIG,
        check=stats.unconverged_moving_stats,
    ),
    Rule(
        code="BN019", name="fine-tune-training-mode", severity=Severity.WARNING,
        summary="a nested pretrained backbone (Keras Applications, KerasHub) with trainable BN layers is "
                "called without `training=False`: fine-tuning overwrites its moving statistics and "
                "normalises with batch statistics (Keras' transfer-learning guide)",
        what=_text("""
            Finds nested models that are pretrained backbones, Keras Applications models recognised by
            the name Keras gives them (`resnet50`, `mobilenetv2_1.00_224`, `efficientnetb0`,
            `densenet121`, ...) and KerasHub backbone classes (`keras_hub>ResNetBackbone`), that have
            trainable BatchNormalization layers and are called without `training=False`: the saved
            config records each call's arguments. A base inside a `Sequential` is called without
            arguments. Your own nested blocks are not looked at, and neither are bases whose BN layers
            are all frozen (BN013 reports those).
            """),
        why=_text("""
            A BatchNormalization layer called in training mode (during `fit`) normalises with the
            statistics of the current batch and moves its moving statistics towards them. For a
            pretrained base that is what fine-tuning must not do: the small, task-specific batches
            overwrite the statistics learnt on the large pretraining data, and the base's features shift
            under the new head. Keras' transfer-learning guide
            (https://keras.io/guides/transfer_learning/) calls the base with `training=False` for exactly
            this: "when we unfreeze a model that contains BatchNormalization layers in order to do
            fine-tuning, we should keep the BatchNormalization layers in inference mode by passing
            `training=False` when calling the base model". Freezing the base (`base.trainable = False`)
            alone keeps it in inference mode only while it is frozen; unfrozen for fine-tuning, a base
            called without `training=False` runs its BN layers in training mode again. This is the
            accuracy drop reported in keras-team/keras issues 9214, 10214 and 11590.

            Keras 3 before 3.16 does not keep that promise: `fit` calls the model with
            `training=True`, and that overrides the `training=False` recorded in a functional graph
            (fixed by keras-team/keras pull request 23364). For files written by those versions a
            base called with `training=False` is reported too, with another fix: freeze its
            BatchNormalization layers, which run in inference mode in every Keras version.
            """),
        example=_text("""
            ```python
            base = keras.applications.ResNet50(include_top=False, weights="imagenet")
            inputs = keras.Input((224, 224, 3))
            x = base(inputs)                # BN019: should be base(inputs, training=False)
            outputs = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x))
            model = keras.Model(inputs, outputs)
            ```
            """),
        fix=_text("""
            Call the base with `training=False` when you build the fine-tuning model, and keep it so when
            you unfreeze the base: `x = base(inputs, training=False)`. Its BN layers then use the
            pretrained moving statistics in `fit` too, while the weights of the unfrozen layers still
            train. Replace a `Sequential([base, ...])` by a functional model that makes that call.
            With Keras 3 before 3.16, also freeze the BN layers when you unfreeze the base:
            `for layer in base.layers: layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)`.
            """),
        hint="call the base with training=False (`x = base(inputs, training=False)`), also when you unfreeze it",
        needs=NEEDS_GRAPH,
        check=graph.fine_tune_training_mode,
    ),
    Rule(
        code="BN101", name="stats-drift", severity=Severity.WARNING, kind=DYNAMIC,
        summary="on the given data, the BN input's per-channel mean/variance disagree with the moving "
                "statistics; the first drifting layer is named",
        what=_text("""
            With `--data`, compares each BatchNormalization layer's input on the data with its moving
            statistics, per channel: a mean shift `abs(data_mean - moving_mean) / sqrt(moving_variance +
            epsilon)` above `drift-mean-shift` (default 0.5), or a variance ratio `(data_variance +
            epsilon) / (moving_variance + epsilon)` above `drift-variance-ratio` (default 2) or below its
            inverse. A layer drifts when more than `drift-channel-fraction` (default 0.25) of its
            channels do; the first drifting layer in graph order is named.
            """),
        why=_text("""
            At inference BatchNormalization assumes the data looks like the training data. Drift at the
            first BatchNormalization usually means the input preprocessing differs from training (pixels
            0-255 instead of 0-1, BGR instead of RGB, a missing mean subtraction). Drift that starts deeper
            points at a real change in the data, or at statistics that were never right (BN008, BN012).
            """),
        example=_text("""
            ```bash
            # trained on x / 255, probed with raw pixels: the first BN drifts
            bninspect probe model.keras --data images/
            bninspect probe model.keras --data images/ --rescale 1/255   # no drift
            ```
            """),
        fix=_text("""
            Make the preprocessing match training. If the data really changed, recompute the statistics on
            it (`bninspect recalibrate`) or fine-tune.
            """),
        hint="make the input preprocessing match training; if the data really changed, recalibrate",
    ),
    Rule(
        code="BN102", name="train-inference-gap", severity=Severity.WARNING, kind=DYNAMIC,
        summary="predictions with batch statistics differ from predictions with moving statistics by more "
                "than a threshold while a BN layer's statistics disagree with the data; one sample alone must "
                "equal the same sample inside a batch",
        what=_text("""
            With `--data`, compares the predictions with BatchNormalization using batch statistics
            (training mode) and using the moving statistics (inference mode); reports a relative
            difference `||y_batch - y_moving|| / ||y_moving||` above `train-inference-gap` (default 0.1)
            when some BN layer's moving statistics also disagree with the data (BN101's test), and names
            that layer. On a healthy model the gap is batch-to-batch noise of the batch statistics (14%
            at batch 32 on the sample CNN, 9% at batch 128), which no single threshold separates from a
            real mismatch; pooled over all the data, the per-layer statistics do. The gap is measured on
            the first batches until they hold 32 samples (one batch at the default `--batch-size`, at
            most 4), so it costs about one batch whatever the size of the data. Also checks that in inference mode one sample predicted alone
            equals the same sample predicted inside a batch (within `batch-consistency`).
            """),
        why=_text("""
            With trained statistics and reasonable batches the two modes agree closely. A large gap means
            the moving statistics do not describe the data the model sees, so the model validated during
            `fit` is not the one that serves. A prediction that depends on the rest of the batch in
            inference mode means some layer still uses batch statistics at inference (e.g. a custom layer
            calling BatchNormalization with `training=True`).
            """),
        example=_text("""
            ```python
            y = keras.layers.BatchNormalization()(x, training=True)  # batch statistics at inference too
            ```
            """),
        fix=_text("""
            Look at the BN101 findings and recalibrate the statistics; for batch-dependent predictions,
            find the layer that ignores the `training` flag.
            """),
        hint="recalibrate the statistics on representative data; check layers that force training=True",
    ),
    Rule(
        code="BN103", name="non-finite-activation", severity=Severity.ERROR, kind=DYNAMIC,
        summary="NaN/Inf in a BN layer's input or output on the data",
        what=_text("""
            With `--data`, finds BatchNormalization layers whose input or output contains NaN or Inf.
            """),
        why=_text("""
            A non-finite value reaches the model's output through every layer after it. It comes from NaN
            in the data, overflow (float16 tops out at 65504), or broken weights (BN003, BN004).
            """),
        example=_text("""
            ```python
            np.save("sample.npy", images.astype("float16") * 1000)  # overflows in float16
            ```
            """),
        fix=_text("""
            Check the data for NaN/Inf, fix BN003/BN004 findings, and run the first failing layer in
            float32.
            """),
        hint="check the input data for NaN/Inf and the weights for BN003/BN004; run in float32",
    ),
    Rule(
        code="BN104", name="dead-channel", severity=Severity.INFO, kind=DYNAMIC,
        summary="channels whose BN input is constant on the data",
        what=_text("""
            With `--data`, finds channels whose BatchNormalization input has a variance over all the data
            of at most `dead-channel-variance` (default 1e-12) times `max(1, mean^2)`: the channel is
            constant at float32 precision.
            """),
        why=_text("""
            A constant input channel makes the output the constant beta (or, with a collapsed moving
            variance, an amplified copy of tiny differences, BN005). It is usually a dead unit upstream (a
            ReLU that never fires), wasted capacity.
            """),
        example=_text("""
            ```python
            x = keras.layers.Conv2D(64, 3, activation="relu")(x)  # a filter that never fires
            x = keras.layers.BatchNormalization()(x)
            ```
            """),
        fix=_text("""
            Prune the channel and the filter that feeds it, or fix training (learning rate,
            initialisation, LeakyReLU).
            """),
        hint="prune the channel, or fix the dead units upstream (learning rate, initialisation, LeakyReLU)",
    ),
)

RULES_BY_CODE: dict[str, Rule] = {rule.code: rule for rule in RULES}
RULES_BY_NAME: dict[str, Rule] = {rule.name: rule for rule in RULES}


def find_rule(code_or_name: str) -> Rule | None:
    token = code_or_name.strip()
    return RULES_BY_CODE.get(token.upper()) or RULES_BY_NAME.get(token.lower())
