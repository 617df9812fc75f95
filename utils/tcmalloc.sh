# Sourced by the scripts: preload tcmalloc where Debian's libtcmalloc-minimal4 is installed (faster CPU runs).
for _lib in /usr/lib/*/libtcmalloc_minimal.so.4; do
  if [ -f "$_lib" ]; then
    case ":${LD_PRELOAD:-}:" in *":$_lib:"*) ;; *) export LD_PRELOAD="$_lib${LD_PRELOAD:+:$LD_PRELOAD}" ;; esac
    break
  fi
done
unset _lib
