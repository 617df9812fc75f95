# Sourced by the scripts: preload tcmalloc where Debian's libtcmalloc-minimal4 is installed (faster CPU runs).
# Not on a GPU host (an NVIDIA device node present): there the host only draws noise and launches kernels, so it
# buys nothing, and it would sit under CUDA's pinned-memory allocator untested. TCMALLOC=1 preloads it anyway,
# TCMALLOC=0 never.
_want="${TCMALLOC:-auto}"
if [ "$_want" = auto ]; then
  if ls /dev/nvidia[0-9]* >/dev/null 2>&1; then _want=0; else _want=1; fi
fi
if [ "$_want" = 1 ]; then
  for _lib in /usr/lib/*/libtcmalloc_minimal.so.4; do
    if [ -f "$_lib" ]; then
      case ":${LD_PRELOAD:-}:" in *":$_lib:"*) ;; *) export LD_PRELOAD="$_lib${LD_PRELOAD:+:$LD_PRELOAD}" ;; esac
      break
    fi
  done
fi
unset _lib _want
