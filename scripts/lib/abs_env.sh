# Sourced by the experiment scripts before they cd to the repository's root. Each of DATA,
# OUTPUT, TEACHER_CKPT, TEACHER_ROOT, STUDENT_CFG and CLIP_ROOT that holds a relative path
# is made absolute against the caller's physical folder (pwd -P, so ".." means what ls
# shows there), unless the caller is the repository's root, where nothing changes (the
# configs of runs made there stay as they were). DATA=data run from elsewhere must not
# mean the repository's data/ folder (another dataset) or put runs into its tree.
abs_env() {
  local name here repo
  here=$(pwd -P)
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
  if [ "$here" = "$repo" ]; then return 0; fi
  for name in "$@"; do
    if [ -n "${!name:-}" ] && [[ ${!name} != /* ]]; then
      printf -v "$name" '%s/%s' "$here" "${!name}"
    fi
  done
}
abs_env DATA OUTPUT TEACHER_CKPT TEACHER_ROOT STUDENT_CFG CLIP_ROOT
