"""Class names of the layers that Keras itself provides, for BN017 on Keras 2 configs, and the
libraries whose registered classes a model may need.

Keras 3 configs name each class's module (built-ins live in `keras.*`, tf-keras's in `tf_keras.*`)
and registered name (custom classes have `package>Name`), so they need no list. Keras 2 / tf.keras
configs carry only `class_name`; anything not listed here needs a custom object to load.
Collected from keras 3.x and tf-keras 2.x `layers` namespaces, plus the internal and legacy names
that appear in saved configs.

Layer: foundation (the layer order is written in tests/test_layers.py).
"""

BUILTIN_LAYER_CLASSES = frozenset("""
Activation ActivityRegularization AdaptiveAveragePooling1D AdaptiveAveragePooling2D
AdaptiveAveragePooling3D AdaptiveMaxPooling1D AdaptiveMaxPooling2D AdaptiveMaxPooling3D Add
AdditiveAttention AlphaDropout Attention AugMix AutoContrast Average AveragePooling1D
AveragePooling2D AveragePooling3D AvgPool1D AvgPool2D AvgPool3D BatchNormalization Bidirectional
CategoryEncoding CenterCrop Concatenate ContrastLimitedAdaptiveHistogramEqualization Conv1D
Conv1DTranspose Conv2D Conv2DTranspose Conv3D Conv3DTranspose ConvLSTM1D ConvLSTM2D ConvLSTM3D
Convolution1D Convolution1DTranspose Convolution2D Convolution2DTranspose Convolution3D
Convolution3DTranspose Cropping1D Cropping2D Cropping3D CutMix Dense DenseFeatures DepthwiseConv1D
DepthwiseConv2D Discretization Dot Dropout DynamicEmbedding DynamicLookup ELU EinsumDense Embedding
Equalization Flatten GRU GRUCell GaussianDropout GaussianNoise GlobalAveragePooling1D
GlobalAveragePooling2D GlobalAveragePooling3D GlobalAvgPool1D GlobalAvgPool2D GlobalAvgPool3D
GlobalMaxPool1D GlobalMaxPool2D GlobalMaxPool3D GlobalMaxPooling1D GlobalMaxPooling2D
GlobalMaxPooling3D GroupNormalization GroupQueryAttention GroupedQueryAttention HashedCrossing Hashing
Identity InputLayer IntegerLookup LSTM LSTMCell Lambda Layer LayerNormalization LeakyReLU
LocallyConnected1D LocallyConnected2D Masking MaxNumBoundingBoxes MaxPool1D MaxPool2D MaxPool3D
MaxPooling1D MaxPooling2D MaxPooling3D Maximum MelSpectrogram Minimum MixUp MultiHeadAttention
Multiply Normalization PReLU Permute Pipeline RMSNormalization RNN RandAugment RandomBrightness
RandomColorDegeneration RandomColorJitter RandomContrast RandomCrop RandomElasticTransform
RandomErasing RandomFlip RandomFourierFeatures RandomGaussianBlur RandomGrayscale RandomHeight
RandomHue RandomInvert RandomPerspective RandomPosterization RandomRotation RandomSaturation
RandomSharpness RandomShear RandomTranslation RandomWidth RandomZoom ReLU RepeatVector Rescaling
Reshape Resizing ReversibleEmbedding STFTSpectrogram SeparableConv1D SeparableConv2D
SeparableConvolution1D SeparableConvolution2D SimpleRNN SimpleRNNCell Softmax Solarization
SpatialDropout1D SpatialDropout2D SpatialDropout3D SpectralNormalization StackedRNNCells
StringLookup Subtract SyncBatchNormalization TextVectorization ThresholdedReLU TimeDistributed
UnitNormalization UpSampling1D UpSampling2D UpSampling3D Wrapper ZeroPadding1D ZeroPadding2D
ZeroPadding3D
Functional Model Sequential
TFOpLambda SlicingOpLambda TensorFlowOpLayer InstanceProperty InstanceMethod ClassMethod
BatchNormalizationV1 BatchNormalizationV2 LayerNormalizationV1 GRUV1 GRUV2 LSTMV1 LSTMV2
CuDNNGRU CuDNNLSTM PeepholeLSTMCell
Merge Highway MaxoutDense AtrousConvolution1D AtrousConvolution2D Deconvolution2D Deconvolution3D
""".split())

# Layers whose config holds code Keras runs on load, and what that code is.
STORED_CODE_CLASSES = {"Lambda": "Python bytecode", "TorchModuleWrapper": "a pickled PyTorch module"}

# Keras 3 module prefixes of built-in objects (layers, initializers, dtype policies, ...).
BUILTIN_MODULE_ROOTS = ("keras", "tf_keras")

# Libraries that register their own Keras classes (registered names `keras_hub>ResNetBackbone`):
# loading their models needs the library installed, not the user's code. Told by the module root
# and the registered name's package, never by importing the library.
LIBRARY_MODULE_ROOTS = ("keras_hub", "keras_nlp", "keras_cv")


def providing_library(module: str | None, registered_name: str | None) -> str | None:
    """The library that provides a serialised class: "keras" or "tf_keras" for their own classes,
    "keras_hub" etc. for the libraries above, None for anything else (the user's code).

    A registered name with a package must agree with the module: `my_package>Net` defined in a
    module under keras_hub is still the user's class.
    """
    root = module.split(".", 1)[0] if isinstance(module, str) and module else None
    package = registered_name.split(">", 1)[0] if isinstance(registered_name, str) and ">" in registered_name \
        else None
    if root in BUILTIN_MODULE_ROOTS + LIBRARY_MODULE_ROOTS:
        return root if package in (None, root) else None
    if root is None and package in LIBRARY_MODULE_ROOTS:
        return package
    return None
