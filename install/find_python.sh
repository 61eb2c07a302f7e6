# Sourced by install/setup_env.sh and tools/gpu_check.sh: find_python NAME prints a runnable
# interpreter for NAME (a command such as python3.12, or a path). Where NAME is a pyenv shim whose
# version is not selected ("pyenv: python3.12: command not found"), the matching pyenv version's
# own interpreter is used, so PYTHON=python3.12 works wherever pyenv has a 3.12.
find_python() {
    local name="$1" version prefix
    if "$name" -c 'import sys' >/dev/null 2>&1; then
        command -v "$name" || echo "$name"
        return 0
    fi
    version="${name##*/}"
    version="${version#python}"
    if [[ "$version" =~ ^3\.[0-9]+$ ]] && command -v pyenv >/dev/null 2>&1; then
        prefix="$(pyenv prefix "$version" 2>/dev/null)" || prefix=""
        if [[ -n "$prefix" && -x "$prefix/bin/python$version" ]]; then
            echo "$prefix/bin/python$version"
            return 0
        fi
    fi
    return 1
}
