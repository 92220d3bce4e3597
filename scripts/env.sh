# Sourced by the other scripts: use the active virtual environment, or make and enter ./.venv, and define
# install_extras, which installs carotid with some extras and says what it does, how long it takes and when it is done.
set -o pipefail # a failing pip fails its filtered pipeline
# CAROTID_PYTHON is how a user's own shell reaches that Python afterwards (for printed next steps).
CAROTID_PYTHON=python
if [ -z "${VIRTUAL_ENV:-}" ]; then
    CAROTID_PYTHON=.venv/bin/python
    if [ ! -x .venv/bin/python ]; then
        echo "creating the virtual environment .venv (no virtual environment is active)"
        python3 -m venv .venv
    fi
    # shellcheck disable=SC1091
    . .venv/bin/activate
fi

# A stamp in the environment, keyed on pyproject.toml, the extras, the pip options and the Python: a second run
# with nothing changed skips pip (which needs seconds even when everything is installed). Editable installs:
# changed code needs no reinstall, a changed pyproject.toml does.
_install_key() {
    { cat pyproject.toml; echo "$*"; python -c 'import sys; print(sys.executable, sys.version)'; } | sha256sum | cut -c1-16
}

_stamp() { echo "$VIRTUAL_ENV/.carotid-installed-$(echo "$1" | tr ',' '-')"; }

# is_installed EXTRAS [pip options…]: true when install_extras ran with these and pyproject.toml is unchanged.
is_installed() {
    local stamp
    stamp="$(_stamp "$1")"
    [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(_install_key "$@")" ]
}

_seconds_since() { echo "$((SECONDS - $1))"; }

_phases() {
    local line status
    while true; do
        # pip is silent while it unpacks (PyTorch and the CUDA libraries take minutes): a line every 30 s says
        # it still works.
        IFS= read -r -t 30 line && status=0 || status=$?
        if [ "$status" -gt 128 ]; then
            printf '  [%4ss] still installing…\n' "$(_seconds_since "$1")"
            continue
        fi
        [ "$status" -eq 0 ] || break
        case "$line" in
            Collecting* | "Building wheel"* | "Installing collected packages"*)
                printf '  [%4ss] %s\n' "$(_seconds_since "$1")" "${line:0:110}"
                ;;
        esac
    done
}

# install_extras EXTRAS [pip options…]: pip install -e ".[EXTRAS]", printing one line per phase with elapsed seconds.
install_extras() {
    local extras="$1"
    shift
    local stamp
    stamp="$(_stamp "$extras")"
    if [ -n "${CAROTID_NO_INSTALL:-}" ]; then # the tests run this script in an environment already installed
        echo "install skipped (CAROTID_NO_INSTALL is set)"
        return 0
    fi
    if is_installed "$extras" "$@"; then
        echo "carotid[$extras] is installed and pyproject.toml is unchanged: install skipped"
        return 0
    fi
    local started=$SECONDS log
    log="$(mktemp)"
    if [ ! -f "$VIRTUAL_ENV/.carotid-pip-upgraded" ]; then
        echo "upgrading pip in $VIRTUAL_ENV (seconds)"
        python -m pip install -q --upgrade pip >/dev/null && touch "$VIRTUAL_ENV/.carotid-pip-upgraded"
    fi
    echo "installing carotid[$extras] and its dependencies into $VIRTUAL_ENV"
    echo "  (the first time: PyTorch and the rest, about 2 GB: 2-7 minutes on an idle machine, longer on a busy"
    echo "   one; a line per package below, and one every 30 s while pip unpacks; later runs skip this)"
    # pip's own lines, cut to one per phase and package, each with the seconds since the start.
    if ! python -m pip install --progress-bar off -e ".[$extras]" "$@" 2>&1 | tee "$log" | _phases "$started"; then
        echo "error: pip could not install carotid[$extras]; its output:" >&2
        cat "$log" >&2
        rm -f "$log"
        return 1
    fi
    rm -f "$log"
    _install_key "$extras" "$@" >"$stamp"
    echo "installed carotid[$extras] in $(_seconds_since "$started") s"
}
