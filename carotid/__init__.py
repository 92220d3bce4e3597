"""carotid: carotid-ultrasound image classifiers, trained and evaluated per person with Hugging Face Accelerate."""

import os as _os
import sys as _sys

__version__ = "0.2.0"

# Started as a command (`python -m carotid.X` names "-m" while the package is imported; console scripts are
# carotid-*): a Ctrl-C while torch is still being imported ends with one line too, not a traceback.
if _sys.argv[:1] == ["-m"] or _os.path.basename(_sys.argv[0] if _sys.argv else "").startswith("carotid-"):
    from carotid.core.errors import quiet_ctrl_c_until_run

    quiet_ctrl_c_until_run()
