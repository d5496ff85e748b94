"""Makes this Python process and its children behave as if TensorFlow and tf-keras were not installed.

Put on PYTHONPATH by tests/test_backend_matrix.py for the JAX and PyTorch runs of the backend
suite, with BNINSPECT_TEST_WITHOUT_TENSORFLOW=1: a None entry in sys.modules makes `import
tensorflow` raise ModuleNotFoundError (name "tensorflow"), as on a machine without it, and
`importlib.util.find_spec` return None. So any import of TensorFlow by bninspect on those
backends fails the test instead of passing unnoticed.
"""

import os
import sys

if os.environ.get("BNINSPECT_TEST_WITHOUT_TENSORFLOW") == "1":
    for _name in ("tensorflow", "tf_keras", "tensorboard"):
        sys.modules.setdefault(_name, None)
