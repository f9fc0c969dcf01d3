// gsv-triton console: voices, live events, and a form that speaks through the gateway.
// Everything shown from the server goes through textContent / option.text: never innerHTML.
"use strict";

(function () {
  const LANGUAGES = ["all_zh", "zh", "en", "auto", "all_ja", "ja", "all_ko", "ko", "all_yue", "yue", "auto_yue"];
  const EVENT_KINDS = ["staged", "validated", "active", "failed", "quarantined", "rolled_back", "released",
                       "canary", "promoted"];
  const ROUTING_KINDS = new Set(["active", "canary", "promoted", "rolled_back", "released", "failed", "quarantined"]);
  const MAX_EVENTS = 200;

  const $ = (id) => document.getElementById(id);
  const player = $("player");
  let voices = [];
  let objectUrl = null;
  let refreshTimer = null;

  // what the tests (and a curious user) can read: window.gsvConsole
  const state = window.gsvConsole = { voicesLoaded: 0, events: 0, bytes: 0, loadeddata: 0, errors: [] };

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function setStatus(text, isError) {
    const status = $("status");
    status.textContent = text;
    status.className = isError ? "error" : "muted";
    if (isError) state.errors.push(text);
  }

  function fillOptions(select, items, keep) {
    // items: [value, label] pairs
    const same = select.options.length === items.length &&
      items.every(([value, label], i) => select.options[i].value === String(value) && select.options[i].text === String(label));
    if (same) return;   // left alone: keeps the user's choice and focus
    const previous = keep ? select.value : null;
    select.replaceChildren(...items.map(([value, label]) => {
      const option = document.createElement("option");
      option.value = String(value);
      option.text = String(label);
      return option;
    }));
    if (previous !== null && items.some(([value]) => String(value) === previous)) select.value = previous;
  }

  // ---- voices ---------------------------------------------------------------------------

  function cell(value, unknown) {
    if (value === null || value === undefined) return el("td", unknown, "unknown");
    return el("td", value);
  }

  function renderVoices(data) {
    const body = $("voices").tBodies[0];
    const known = data.control && !data.control_error;
    body.replaceChildren(...data.voices.map((voice) => {
      const row = el("tr");
      row.dataset.voice = voice.name;
      row.append(el("td", voice.name, "voice-name"));
      row.append(voice.versions.length ? el("td", voice.versions.join(", ")) : el("td", "none loaded", "unknown"));
      row.append(known ? cell(voice.active, "none") : el("td", "unknown", "unknown"));
      let canary;
      if (!known) canary = el("td", "unknown", "unknown");
      else if (voice.canary === null) canary = el("td", "—");
      else canary = el("td", `${voice.canary} (${Math.round(voice.canary_weight * 100)}% of requests)`);
      row.append(canary);
      return row;
    }));
    let note = "";
    if (!data.control) note = "No control service (--control): active and canary versions are unknown.";
    else if (data.control_error) note = data.control_error;
    $("voices-note").textContent = note;
    $("voices-note").className = data.control_error ? "error" : "muted";

    fillOptions($("voice"), data.voices.filter((v) => v.versions.length).map((v) => [v.name, v.name]), true);
    fillVersions();
  }

  function fillVersions() {
    const voice = voices.find((v) => v.name === $("voice").value);
    const items = [["", "routing (active / canary)"]];
    if (voice) voice.versions.forEach((n) => items.push([n, `version ${n}`]));
    fillOptions($("version"), items, true);
  }

  async function loadVoices() {
    try {
      const resp = await fetch("/console/api/voices", { cache: "no-store" });
      const data = await resp.json();
      if (!resp.ok) throw new Error(data.message || `HTTP ${resp.status}`);
      voices = data.voices;
      renderVoices(data);
      state.voicesLoaded += 1;
      $("health").textContent = `${voices.length} voice(s)`;
      return data;
    } catch (err) {
      $("health").textContent = `voices unavailable: ${err.message}`;
      return null;
    }
  }

  function scheduleRefresh() {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(loadVoices, 300);
  }

  // ---- events ---------------------------------------------------------------------------

  function showEvent(kind, raw) {
    let data;
    try { data = JSON.parse(raw); } catch (err) { return; }
    const item = el("li", null, `event event-${kind}`);
    const when = typeof data.time === "number" ? new Date(data.time * 1000).toLocaleString() : "";
    item.append(el("span", when, "muted"), " ", el("span", kind, "event-kind"),
                el("span", `${data.voice ?? "?"} v${data.version ?? "?"}`, "event-voice"));
    if (data.reason) item.append(" — ", el("span", data.reason, "event-reason"));
    if (data.host) item.append(" ", el("span", `(${data.host})`, "muted"));
    const list = $("events");
    list.prepend(item);
    while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
    state.events += 1;
    if (ROUTING_KINDS.has(kind)) scheduleRefresh();
  }

  function followEvents(control) {
    const note = $("events-note");
    if (!control) {
      note.textContent = "No control service (--control): no live events.";
      return;
    }
    const source = new EventSource("/console/api/events?replay=1");
    EVENT_KINDS.forEach((kind) => source.addEventListener(kind, (e) => showEvent(kind, e.data)));
    source.onopen = () => { note.textContent = "live"; note.className = "muted"; };
    source.onerror = () => { note.textContent = "event stream interrupted; reconnecting…"; note.className = "error"; };
  }

  // ---- speaking -------------------------------------------------------------------------

  function fixWavSizes(bytes) {
    // a streamed WAV has 0xFFFFFFFF sizes; the finished file gets its real ones
    if (bytes.length >= 44 && String.fromCharCode(...bytes.slice(0, 4)) === "RIFF") {
      const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      view.setUint32(4, bytes.length - 8, true);
      if (String.fromCharCode(...bytes.slice(36, 40)) === "data") view.setUint32(40, bytes.length - 44, true);
    }
    return bytes;
  }

  async function explainFailure(url) {
    // the <audio> element hides the body of an error answer: ask again for the message
    const abort = new AbortController();
    try {
      const resp = await fetch(url, { signal: abort.signal });
      if (!resp.ok) {
        const data = await resp.json().catch(() => ({}));
        setStatus(`error ${resp.status}: ${data.message || resp.statusText}`, true);
      } else {
        setStatus("the browser could not play the audio", true);
      }
    } catch (err) {
      setStatus(`request failed: ${err.message}`, true);
    } finally {
      abort.abort();
    }
  }

  function play() {
    const started = player.play();
    if (started && started.catch) started.catch((err) => setStatus(`ready; press play (${err.name})`, false));
  }

  function speakStreaming(form) {
    const query = new URLSearchParams({ text: form.text, text_lang: form.language, voice: form.voice,
                                        streaming_mode: "true", media_type: "wav" });
    if (form.version) query.set("voice_version", form.version);
    const url = `/tts?${query}`;
    player.dataset.url = url;
    player.src = url;
    setStatus("synthesizing (streamed)…");
    play();
  }

  async function speakWithClip(form, clip) {
    const body = new FormData();
    for (const key of ["text", "voice", "version", "language", "ref_text", "ref_language"]) body.append(key, form[key]);
    body.append("ref_audio", clip, clip.name || "clip.wav");
    setStatus("uploading the clip…");
    let resp;
    try {
      resp = await fetch("/console/api/tts", { method: "POST", body });
    } catch (err) {
      setStatus(`request failed: ${err.message}`, true);
      return;
    }
    if (!resp.ok) {
      const data = await resp.json().catch(() => ({}));
      setStatus(`error ${resp.status}: ${data.message || resp.statusText}`, true);
      return;
    }
    const reader = resp.body.getReader();
    const chunks = [];
    let size = 0;
    for (;;) {
      let part;
      try { part = await reader.read(); } catch (err) { setStatus(`stream broke: ${err.message}`, true); return; }
      if (part.done) break;
      chunks.push(part.value);
      size += part.value.length;
      state.bytes = size;
      setStatus(`receiving… ${(size / 1024).toFixed(1)} KiB`);
    }
    const bytes = new Uint8Array(size);
    let at = 0;
    for (const chunk of chunks) { bytes.set(chunk, at); at += chunk.length; }
    if (objectUrl) URL.revokeObjectURL(objectUrl);
    objectUrl = URL.createObjectURL(new Blob([fixWavSizes(bytes)], { type: "audio/wav" }));
    delete player.dataset.url;
    player.src = objectUrl;
    setStatus(`received ${(size / 1024).toFixed(1)} KiB (version ${resp.headers.get("X-Voice-Version")})`);
    play();
  }

  function onSubmit(event) {
    event.preventDefault();
    const form = {
      text: $("text").value, voice: $("voice").value, version: $("version").value, language: $("language").value,
      ref_text: $("ref-text").value, ref_language: $("ref-language").value,
    };
    if (!form.text.trim()) { setStatus("type a text first", true); return; }
    if (!form.voice) { setStatus("no voice is loaded", true); return; }
    const clip = $("ref-audio").files[0];
    if (clip) speakWithClip(form, clip); else speakStreaming(form);
  }

  // ---- start ----------------------------------------------------------------------------

  player.addEventListener("loadeddata", () => {
    state.loadeddata += 1;
    if (player.dataset.url) setStatus("playing as it streams");
  });
  player.addEventListener("progress", () => { state.progress = (state.progress || 0) + 1; });
  player.addEventListener("error", () => {
    if (player.dataset.url) explainFailure(player.dataset.url);
    else if (player.getAttribute("src")) setStatus("the browser could not play the audio", true);
  });

  fillOptions($("language"), LANGUAGES.map((l) => [l, l]));
  $("language").value = "auto";
  fillOptions($("ref-language"), [["", "same as the text"], ...LANGUAGES.map((l) => [l, l])]);
  $("voice").addEventListener("change", fillVersions);
  $("refresh").addEventListener("click", loadVoices);
  $("speak-form").addEventListener("submit", onSubmit);
  window.addEventListener("error", (e) => state.errors.push(String(e.message)));

  loadVoices().then((data) => followEvents(data ? data.control : false));
})();
