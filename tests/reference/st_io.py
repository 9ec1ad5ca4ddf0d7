"""st_io.py — the safetensors reader/writer of the test scripts: python/ser_torch.py's (the
module users import), re-exported under the old name.

defines:
    save_file(tensors, path, metadata=None)
    load_file(path) -> dict[str, torch.Tensor]
    load_metadata(path) -> dict[str, str]
    DTYPES (safetensors name -> torch dtype)
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
from ser_torch import DTYPES, load_file, load_metadata, save_file  # noqa: E402,F401
