# The demo program: an ordinary Python process with some state in memory.
# It knows nothing about crest.
import hashlib, os, time

state = bytearray(os.urandom(8 << 20))   # 8 MiB of state
n = 0
while True:
    n += 1
    state[(n * 4099) % len(state)] ^= n & 0xff
    digest = hashlib.sha256(state).hexdigest()[:12]
    print(f"pid {os.getpid()}  count {n:3d}  state {digest}", flush=True)
    time.sleep(0.4)
