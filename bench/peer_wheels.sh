# Sourced by the GPU scripts: installs the peers (Liger-Kernel, Cut Cross-Entropy) from the wheels
# carried in .whl/ into /tmp/site and puts that on PYTHONPATH. The GPU machine has no network:
#   python3 -m pip download --no-deps -d .whl liger-kernel==0.8.5 cut-cross-entropy==25.1.1
# A missing folder or a failed install only turns the peers' rows into "not installed". Once per
# run: a script started by one that sourced this (gpu_all.sh -> gpu_compare.sh) inherits the path.
case ":${PYTHONPATH:-}:" in
  *:/tmp/site:*) ;;
  *)
    if ls .whl/*.whl >/dev/null 2>&1; then
      if python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
           --target /tmp/site .whl/*.whl; then
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
      else
        echo "peer wheels failed to install; their rows will say 'not installed'" >&2
      fi
    else
      echo "no .whl/ folder; the Liger-Kernel and Cut Cross-Entropy rows will say 'not installed'" >&2
    fi ;;
esac
