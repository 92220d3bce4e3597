# Sourced by the other scripts: use the active virtual environment, or make and enter ./.venv.
if [ -z "${VIRTUAL_ENV:-}" ]; then
    if [ ! -x .venv/bin/python ]; then
        echo "creating .venv (no virtual environment is active)"
        python3 -m venv .venv
    fi
    # shellcheck disable=SC1091
    . .venv/bin/activate
fi
python -m pip install -q --upgrade pip >/dev/null
