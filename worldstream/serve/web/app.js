// worldstream play: browser client. No build step, no dependencies.
//
// Protocol (docs/play.md): JSON text messages both ways; the server answers each clip with a JSON
// `clip` header followed by exactly `n_frames` binary JPEG messages. The client pulls: it keeps at
// most one action outstanding and sends the next one when its playback buffer runs low, so the
// server never generates far ahead of what is shown (low action-to-frame latency).
"use strict";

(() => {
  const CFG = {
    arrowMouse: 0.1,          // MG3's usual mouse magnitude: 0.1 = 1.5 deg per frame
    degPerMouseUnit: 15,      // MG3 kinematics: mouse 1.0 turns 15 deg per frame
    mouseDegPerPixel: 0.12,   // pointer-lock sensitivity (degrees of turn per pixel of movement)
    maxBufferClips: 2,        // more buffered than this -> skip ahead (latency over smoothness)
    requestMarginMs: 150,     // request the next clip this long before the buffer would run dry
    uploadMaxSide: 640,       // uploads are downscaled in the browser before sending
    pingEveryMs: 5000,
    errorsShown: 8,
    outstandingTimeoutMs: 60000,
    errorBackoffMs: 1000,
  };
  const KEY_CODES = { KeyW: "W", KeyA: "A", KeyS: "S", KeyD: "D", Space: "Space" };
  const ARROWS = ["ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight"];

  const $ = (id) => document.getElementById(id);
  const screen = $("screen");
  const ctx = screen.getContext("2d");
  const mini = $("minimap");
  const mctx = mini.getContext("2d");
  const mouseHud = $("mouse-hud");
  const hctx = mouseHud.getContext("2d");

  // all client state in one object (exposed as window.worldstream for debugging and tests)
  const S = {
    ws: null, hello: null, connected: false, paused: false, closeInfo: null,
    episode: 0, resetPending: false,
    header: null, framesLeft: 0, frameIdx: 0,          // framing of the clip being received
    queue: [], decodeChain: Promise.resolve(),          // decoded frames waiting to be shown
    held: new Set(), tapped: new Set(), arrows: new Set(), pointer: [0, 0], locked: false,
    seq: 0, outstanding: null, genEstimateMs: 600,
    poses: [], memFrames: [], shownIndex: -1,           // per-episode camera path (global frame index)
    lastPose: null, lastHeader: null,
    framesDrawn: 0, clipsReceived: 0, drawTimes: [], latencyMs: null, nextDrawAt: 0,
    upload: null, rttMs: null, retryAt: 0,
  };
  window.worldstream = S;

  // ---- messages ----------------------------------------------------------------------------------

  function showMessage(text, code, kind) {
    const li = document.createElement("li");
    if (kind) li.className = kind;
    if (code) {
      const c = document.createElement("span");
      c.className = "code";
      c.textContent = code;
      li.appendChild(c);
    }
    li.appendChild(document.createTextNode(text));
    const list = $("errors");
    list.prepend(li);
    while (list.children.length > CFG.errorsShown) list.lastChild.remove();
  }

  function setStatus(state, text) {
    const el = $("status");
    el.className = "status " + state;
    el.dataset.state = state;
    el.textContent = text;
  }

  function send(obj) {
    if (!S.ws || S.ws.readyState !== WebSocket.OPEN) return false;
    S.ws.send(JSON.stringify(obj));
    return true;
  }

  // ---- connection ----------------------------------------------------------------------------

  function connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${proto}//${location.host}/ws`);
    ws.binaryType = "blob";
    S.ws = ws;
    S.closeInfo = null;
    setStatus("connecting", "connecting…");
    ws.onopen = () => { S.connected = true; };
    ws.onmessage = (ev) => {
      if (typeof ev.data === "string") onText(ev.data);
      else onFrame(ev.data);
    };
    ws.onclose = (ev) => {
      S.connected = false;
      S.outstanding = null;
      S.closeInfo = { code: ev.code, reason: ev.reason };
      if (ev.code === 1013) {
        setStatus("busy", "busy — click to retry");
        showMessage(ev.reason || "the server has no free session; try again later", "busy");
      } else {
        setStatus("closed", `disconnected (${ev.code}) — click to reconnect`);
        if (ev.reason) showMessage(ev.reason, `close ${ev.code}`);
      }
    };
  }

  $("status").addEventListener("click", () => {
    if (!S.connected) connect();
  });

  function onText(text) {
    let msg;
    try { msg = JSON.parse(text); } catch (e) { showMessage("unparsable server message", "client"); return; }
    switch (msg.type) {
      case "hello": onHello(msg); break;
      case "clip": onClipHeader(msg); break;
      case "pong":
        if (typeof msg.t_client === "number") S.rttMs = performance.now() - msg.t_client;
        $("status").title = S.rttMs === null ? "" : `round trip ${S.rttMs.toFixed(1)} ms`;
        break;
      case "error":
        showMessage(msg.message, msg.code);
        if (msg.ref === "action" || msg.code === "not_reset") {
          S.outstanding = null;
          S.retryAt = performance.now() + CFG.errorBackoffMs;  // no request storm when every clip fails
        }
        if (msg.ref === "reset") S.resetPending = false;
        break;
      default:
        showMessage(`unknown server message type ${msg.type}`, "client");
    }
  }

  function onHello(h) {
    S.hello = h;
    screen.width = h.width;
    screen.height = h.height;
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, h.width, h.height);
    setStatus("connected", `connected · session ${h.session}`);
    const sel = $("start-image");
    const previous = sel.value;
    sel.textContent = "";
    for (const name of h.builtins) sel.add(new Option(name.replace(/_/g, " "), `builtin:${name}`));
    sel.add(new Option("upload an image…", "upload"));
    if (previous && [...sel.options].some((o) => o.value === previous)) sel.value = previous;
    if (sel.value === "upload" && !S.upload) sel.selectedIndex = 0;
    onStartChoice(false);
    doReset();
  }

  function onClipHeader(h) {
    if (S.framesLeft > 0) showMessage(`clip ${h.clip} started before ${S.framesLeft} frames arrived`, "client");
    S.header = h;
    S.framesLeft = h.n_frames;
    S.frameIdx = 0;
    S.clipsReceived += 1;
    if (h.reset) {
      S.episode = h.episode;
      S.resetPending = false;
      S.poses = [];
      S.memFrames = [];
      S.shownIndex = -1;
      dropQueue();
    }
    h.stale = h.episode !== S.episode || (S.resetPending && !h.reset);  // an older episode's clip
    if (h.stale) return;
    for (let i = 0; i < h.poses.length; i++) S.poses[h.frame_start + i] = h.poses[i];
    S.memFrames = (h.memory && Array.isArray(h.memory.frames)) ? h.memory.frames : [];
    if (S.outstanding && h.seq !== null && h.seq >= S.outstanding.seq) {
      const rt = performance.now() - S.outstanding.t;
      S.genEstimateMs = 0.7 * S.genEstimateMs + 0.3 * rt;
      S.outstanding = null;
    }
    $("gen").textContent = h.timings && typeof h.timings.generate_s === "number"
      ? `${(h.timings.generate_s * 1000).toFixed(0)} ms` : "–";
    $("dropped").textContent = String(h.dropped_frames || 0);
  }

  function onFrame(blob) {
    const h = S.header;
    if (!h || S.framesLeft <= 0) { showMessage("frame without a clip header", "client"); return; }
    const i = S.frameIdx++;
    S.framesLeft -= 1;
    if (h.stale) return;
    const item = { header: h, index: i, global: h.frame_start + i, pose: h.poses[i] || null };
    const decoded = createImageBitmap(blob);
    S.decodeChain = S.decodeChain
      .then(() => decoded)
      .then((bitmap) => {
        if (item.header.episode !== S.episode) { bitmap.close(); return; }
        item.bitmap = bitmap;
        S.queue.push(item);
      })
      .catch((e) => showMessage(`cannot decode frame: ${e}`, "client"));
  }

  function dropQueue() {
    for (const f of S.queue) f.bitmap.close();
    S.queue = [];
  }

  // ---- actions -----------------------------------------------------------------------------

  function clamp(v, lim) { return Math.max(-lim, Math.min(lim, v)); }

  function currentMouse() {
    // [pitch, yaw] per frame. Positive pitch looks down, positive yaw turns right (MG3 convention).
    let pitch = 0, yaw = 0;
    if (S.arrows.has("ArrowUp")) pitch -= CFG.arrowMouse;
    if (S.arrows.has("ArrowDown")) pitch += CFG.arrowMouse;
    if (S.arrows.has("ArrowLeft")) yaw -= CFG.arrowMouse;
    if (S.arrows.has("ArrowRight")) yaw += CFG.arrowMouse;
    // pointer movement since the last action, spread over the next clip's frames
    const frames = S.hello ? S.hello.frames_per_clip : 16;
    const unit = CFG.degPerMouseUnit * frames;
    pitch += (S.pointer[1] * CFG.mouseDegPerPixel) / unit;
    yaw += (S.pointer[0] * CFG.mouseDegPerPixel) / unit;
    const lim = S.hello ? S.hello.mouse_limit : 0.5;
    return [clamp(pitch, lim), clamp(yaw, lim)];
  }

  function activeKeys() {
    const keys = new Set([...S.held, ...S.tapped]);
    return S.hello ? S.hello.keys.filter((k) => keys.has(k)) : [...keys];
  }

  function sendAction() {
    const mouse = currentMouse();
    const keys = activeKeys();
    S.seq += 1;
    const t = performance.now();
    if (!send({ type: "action", keys, mouse, seq: S.seq, t_client: t })) return;
    S.outstanding = { seq: S.seq, t, keys, mouse };
    S.tapped.clear();
    S.pointer = [0, 0];
  }

  function maybeRequest(now) {
    if (!S.connected || S.paused || !S.hello || S.episode === 0 || S.resetPending || now < S.retryAt) return;
    if (S.outstanding) {
      if (now - S.outstanding.t > CFG.outstandingTimeoutMs) S.outstanding = null;
      return;
    }
    const frameMs = 1000 / S.hello.fps;
    const bufferedMs = (S.queue.length + Math.max(0, S.framesLeft)) * frameMs;
    if (bufferedMs <= S.genEstimateMs + CFG.requestMarginMs) sendAction();
  }

  function doReset() {
    const sel = $("start-image").value;
    let image = null;
    if (sel === "upload") {
      if (!S.upload) { showMessage("choose an image file to upload first", "client"); return; }
      image = S.upload;
    } else if (sel) {
      image = sel;
    }
    const prompt = $("prompt").value.trim();
    if (send({ type: "reset", prompt: prompt === "" ? null : prompt, image })) {
      S.resetPending = true;
      S.outstanding = null;
      dropQueue();
    }
  }

  $("reset").addEventListener("click", () => { doReset(); screen.focus(); });
  $("pause").addEventListener("click", togglePause);

  function togglePause() {
    S.paused = !S.paused;
    $("pause").textContent = S.paused ? "Resume" : "Pause";
  }

  // ---- start image ------------------------------------------------------------------------------

  function onStartChoice(openPicker) {
    const v = $("start-image").value;
    if (v === "upload") {
      if (openPicker) $("upload").click();
      if (S.upload) $("start-preview").src = S.upload;
      $("prompt").placeholder = "describe the uploaded scene";
      return;
    }
    if (!v.startsWith("builtin:")) return;
    const name = v.slice("builtin:".length);
    $("start-preview").src = `/builtin/${encodeURIComponent(name)}.png`;
    fetch(`/builtin/${encodeURIComponent(name)}.json`)
      .then((r) => (r.ok ? r.json() : null))
      .then((j) => { if (j && $("start-image").value === v) $("prompt").placeholder = j.prompt; })
      .catch(() => {});
  }

  $("start-image").addEventListener("change", () => onStartChoice(true));

  $("upload").addEventListener("change", () => {
    const file = $("upload").files[0];
    if (!file) return;
    if (!["image/png", "image/jpeg"].includes(file.type)) {
      showMessage(`${file.name}: only PNG or JPEG images`, "upload");
      return;
    }
    const url = URL.createObjectURL(file);
    const img = new Image();
    img.onload = () => {
      // downscale in the browser: the model works at a few hundred pixels at most
      const s = Math.min(1, CFG.uploadMaxSide / Math.max(img.width, img.height));
      const c = document.createElement("canvas");
      c.width = Math.max(1, Math.round(img.width * s));
      c.height = Math.max(1, Math.round(img.height * s));
      c.getContext("2d").drawImage(img, 0, 0, c.width, c.height);
      URL.revokeObjectURL(url);
      const dataUrl = c.toDataURL("image/jpeg", 0.92);
      const limit = S.hello ? S.hello.limits.max_image_bytes : Infinity;
      if ((dataUrl.length * 3) / 4 > limit) {
        showMessage(`${file.name}: still larger than ${limit} bytes after downscaling`, "upload");
        return;
      }
      S.upload = dataUrl;
      $("start-preview").src = dataUrl;
      showMessage(`${file.name} ready (${c.width}x${c.height}); press Reset to start from it`, "", "info");
    };
    img.onerror = () => { URL.revokeObjectURL(url); showMessage(`${file.name}: cannot read image`, "upload"); };
    img.src = url;
  });

  // ---- input ------------------------------------------------------------------------------

  function typing(ev) {
    const t = ev.target;
    return t && (t.tagName === "TEXTAREA" || t.tagName === "INPUT" || t.tagName === "SELECT");
  }

  document.addEventListener("keydown", (ev) => {
    if (typing(ev) || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const key = KEY_CODES[ev.code];
    if (key) { S.held.add(key); S.tapped.add(key); ev.preventDefault(); }
    else if (ARROWS.includes(ev.code)) { S.arrows.add(ev.code); ev.preventDefault(); }
    else if (ev.code === "KeyP" && !ev.repeat) togglePause();
    $("overlay").classList.add("hidden");
  });
  document.addEventListener("keyup", (ev) => {
    const key = KEY_CODES[ev.code];
    if (key) S.held.delete(key);
    else if (ARROWS.includes(ev.code)) S.arrows.delete(ev.code);
  });
  window.addEventListener("blur", () => { S.held.clear(); S.arrows.clear(); });  // no stuck keys

  screen.addEventListener("click", () => {
    screen.focus();
    if (!S.locked && screen.requestPointerLock) {
      try {
        const p = screen.requestPointerLock();
        if (p && p.catch) p.catch(() => {});
      } catch (e) { /* pointer lock unavailable: keys still work */ }
    }
  });
  document.addEventListener("pointerlockchange", () => {
    S.locked = document.pointerLockElement === screen;
    $("overlay").classList.toggle("hidden", S.locked);
    if (!S.locked) S.held.delete("Attack");
  });
  document.addEventListener("mousemove", (ev) => {
    if (!S.locked) return;
    S.pointer[0] += ev.movementX;
    S.pointer[1] += ev.movementY;
  });
  screen.addEventListener("mousedown", (ev) => {
    if (S.locked && ev.button === 0) { S.held.add("Attack"); S.tapped.add("Attack"); }
  });
  document.addEventListener("mouseup", (ev) => { if (ev.button === 0) S.held.delete("Attack"); });

  // ---- drawing ------------------------------------------------------------------------------

  function drawFrame(item, now) {
    ctx.drawImage(item.bitmap, 0, 0, screen.width, screen.height);
    item.bitmap.close();
    S.framesDrawn += 1;
    S.shownIndex = item.global;
    S.lastHeader = item.header;
    if (item.pose) {
      S.lastPose = item.pose;
      const [x, y, z, pitch, yaw] = item.pose;
      const el = $("pose");
      el.textContent = `x ${x.toFixed(0)}  y ${y.toFixed(0)}  z ${z.toFixed(0)}  `
        + `pitch ${pitch.toFixed(1)}°  yaw ${yaw.toFixed(1)}°`;
      el.dataset.pose = JSON.stringify(item.pose);
    }
    if (item.index === 0 && !item.header.reset && typeof item.header.t_client === "number") {
      const lat = now - item.header.t_client;  // action sent -> first frame of its clip shown
      S.latencyMs = S.latencyMs === null ? lat : 0.8 * S.latencyMs + 0.2 * lat;
      $("latency").textContent = `${S.latencyMs.toFixed(0)} ms`;
    }
    $("clip").textContent = `${item.header.clip}·${item.index}`;
    S.drawTimes.push(now);
  }

  function drawKeysHud() {
    const active = new Set([...S.held, ...S.tapped]);
    for (const el of document.querySelectorAll("#keys .key")) el.classList.toggle("on", active.has(el.dataset.key));
    const [pitch, yaw] = currentMouse();
    const w = mouseHud.width, r = w / 2 - 4;
    hctx.clearRect(0, 0, w, w);
    const lim = CFG.arrowMouse;
    const dx = clamp(yaw / lim, 1) * r, dy = clamp(pitch / lim, 1) * r;
    const on = Math.abs(pitch) >= 0.02 || Math.abs(yaw) >= 0.02;  // MG3's dead zone
    hctx.strokeStyle = on ? "#f5c542" : "#555b66";
    hctx.lineWidth = 3;
    hctx.beginPath();
    hctx.moveTo(w / 2, w / 2);
    hctx.lineTo(w / 2 + dx, w / 2 + dy);
    hctx.stroke();
    hctx.fillStyle = on ? "#f5c542" : "#8b92a0";
    hctx.beginPath();
    hctx.arc(w / 2 + dx, w / 2 + dy, 4, 0, 2 * Math.PI);
    hctx.fill();
  }

  function drawMinimap() {
    const W = mini.width, H = mini.height, pad = 14;
    mctx.fillStyle = "#101216";
    mctx.fillRect(0, 0, W, H);
    const pts = [];
    for (let i = 0; i < S.poses.length; i++) if (S.poses[i]) pts.push([i, S.poses[i]]);
    if (pts.length === 0) return;
    // pose units are cm-scale; top-down view with world +X up and +Y right (MG3: X forward, Y right)
    let minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
    for (const [, p] of pts) {
      minX = Math.min(minX, p[0]); maxX = Math.max(maxX, p[0]);
      minY = Math.min(minY, p[1]); maxY = Math.max(maxY, p[1]);
    }
    const span = Math.max(maxX - minX, maxY - minY, 500);
    const scale = (Math.min(W, H) - 2 * pad) / span;
    const cx = (minX + maxX) / 2, cy = (minY + maxY) / 2;
    const map = (p) => [W / 2 + (p[1] - cy) * scale, H / 2 - (p[0] - cx) * scale];
    // grid: one line per metre (100 pose units) when it is not too dense
    if (100 * scale >= 6) {
      mctx.strokeStyle = "#1c2027";
      mctx.lineWidth = 1;
      mctx.beginPath();
      for (let gx = Math.ceil((cy - W / 2 / scale) / 100) * 100; gx < cy + W / 2 / scale; gx += 100) {
        const sx = W / 2 + (gx - cy) * scale;
        mctx.moveTo(sx, 0); mctx.lineTo(sx, H);
      }
      for (let gy = Math.ceil((cx - H / 2 / scale) / 100) * 100; gy < cx + H / 2 / scale; gy += 100) {
        const sy = H / 2 - (gy - cx) * scale;
        mctx.moveTo(0, sy); mctx.lineTo(W, sy);
      }
      mctx.stroke();
    }
    // path: received (dim) and shown (bright)
    for (const [shown, colour] of [[false, "#34506f"], [true, "#6ea8fe"]]) {
      mctx.strokeStyle = colour;
      mctx.lineWidth = 2;
      mctx.beginPath();
      let started = false;
      for (const [i, p] of pts) {
        if (shown && i > S.shownIndex) break;
        const [sx, sy] = map(p);
        if (!started) { mctx.moveTo(sx, sy); started = true; } else mctx.lineTo(sx, sy);
      }
      mctx.stroke();
    }
    // retrieved memory frames of the last clip
    mctx.strokeStyle = "#ff6bd6";
    mctx.lineWidth = 2;
    for (const f of S.memFrames) {
      const p = S.poses[f];
      if (!p) continue;
      const [sx, sy] = map(p);
      mctx.beginPath();
      mctx.arc(sx, sy, 5, 0, 2 * Math.PI);
      mctx.stroke();
    }
    // camera: position + heading (yaw 0 faces +X = up; positive yaw turns right)
    const cur = S.lastPose || pts[pts.length - 1][1];
    const [sx, sy] = map(cur);
    const yaw = (cur[4] * Math.PI) / 180;
    const hx = Math.sin(yaw), hy = -Math.cos(yaw);
    mctx.fillStyle = "#f5c542";
    mctx.beginPath();
    mctx.moveTo(sx + hx * 10, sy + hy * 10);
    mctx.lineTo(sx - hx * 4 - hy * 5, sy - hy * 4 + hx * 5);
    mctx.lineTo(sx - hx * 4 + hy * 5, sy - hy * 4 - hx * 5);
    mctx.closePath();
    mctx.fill();
  }

  // ---- main loop ------------------------------------------------------------------------------

  function tick(now) {
    if (S.hello) {
      const frameMs = 1000 / S.hello.fps;
      const maxQueue = CFG.maxBufferClips * S.hello.frames_per_clip;
      while (S.queue.length > maxQueue) S.queue.shift().bitmap.close();  // skip ahead
      if (S.nextDrawAt < now - frameMs) S.nextDrawAt = now;  // buffer ran dry: restart the clock
      let drew = false;
      if (S.queue.length > 0 && now >= S.nextDrawAt) {
        drawFrame(S.queue.shift(), now);
        S.nextDrawAt += frameMs;
        drew = true;
      }
      maybeRequest(now);
      while (S.drawTimes.length && S.drawTimes[0] < now - 1000) S.drawTimes.shift();
      $("fps").textContent = String(S.drawTimes.length);
      $("buffer").textContent = `${S.queue.length} fr`;
      if (drew) drawMinimap();
    }
    drawKeysHud();
    requestAnimationFrame(tick);
  }

  setInterval(() => { send({ type: "ping", t_client: performance.now() }); }, CFG.pingEveryMs);
  connect();
  requestAnimationFrame(tick);
})();
