# Sourced by the other scripts: use the active virtual environment, or make and enter ./.venv.
# CAROTID_PYTHON is how a user's own shell reaches that Python afterwards (for printed next steps).
CAROTID_PYTHON=python
if [ -z "${VIRTUAL_ENV:-}" ]; then
    CAROTID_PYTHON=.venv/bin/python
    if [ ! -x .venv/bin/python ]; then
        echo "creating .venv (no virtual environment is active)"
        python3 -m venv .venv
    fi
    # shellcheck disable=SC1091
    . .venv/bin/activate
fi
python -m pip install -q --upgrade pip >/dev/null
