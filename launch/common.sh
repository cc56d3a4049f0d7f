# shellcheck shell=bash
# Helpers sourced by the launch scripts: dry-run aware command runner, quoting, errors.
#
# Contract of every script: with --dry-run, stdout carries exactly the commands the script would run, one per
# line, quoted so that `shlex.split(line)` (or the shell) gives back the exact argv; notes go to stderr.

STIV_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY_RUN="${DRY_RUN:-0}"

die() {
  echo "error: $*" >&2
  exit 2
}

note() {
  echo "$*" >&2
}

# Quotes one word like Python's shlex.quote: safe words stay bare, others go in single quotes.
quote_word() {
  local word=$1
  if [[ -z $word ]]; then
    printf "''"
  elif [[ $word =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$word"
  else
    printf "'%s'" "${word//\'/\'\"\'\"\'}"
  fi
}

# Joins words into one shell-quoted command line (like shlex.join).
join_cmd() {
  local out="" word
  for word in "$@"; do
    out+="${out:+ }$(quote_word "$word")"
  done
  printf '%s' "$out"
}

# Runs a command, or with DRY_RUN=1 prints it. Either way the command line is shown.
run() {
  if [[ $DRY_RUN == 1 ]]; then
    join_cmd "$@"
    printf '\n'
  else
    printf '+ %s\n' "$(join_cmd "$@")" >&2
    "$@"
  fi
}

# Runs a command in the background (printed, not started, in dry-run). Collect with `wait`.
run_bg() {
  if [[ $DRY_RUN == 1 ]]; then
    join_cmd "$@"
    printf '\n'
  else
    printf '+ %s &\n' "$(join_cmd "$@")" >&2
    "$@" &
  fi
}

# Python helper from this checkout (standard library only: no install needed on the workstation).
stiv_py() {
  PYTHONPATH="$STIV_REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python3}" -m "$@"
}

# Value of a `--key=value` argument, or fails naming the option.
option_value() {
  local arg=$1
  [[ $arg == *=* ]] || die "option ${arg} needs a value: ${arg}=VALUE"
  printf '%s' "${arg#*=}"
}
