// The web page of `lumina-rt serve`: submit a prompt, follow each job's progress over Server-Sent Events (read with
// fetch, so the API key can go in a header), play the finished video, delete a job. No build step, no CDN.
"use strict";

const $ = (id) => document.getElementById(id);
const jobs = new Map(); // id -> {el, video}

function headers(extra = {}) {
  const key = $("api_key").value || localStorage.getItem("lumina_rt_api_key") || "";
  return key ? { ...extra, Authorization: "Bearer " + key } : extra;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  if (!response.ok) {
    const message = body?.error?.message || response.statusText;
    throw new Error(message);
  }
  return body;
}

function render(video) {
  let entry = jobs.get(video.id);
  if (!entry) {
    const el = document.createElement("li");
    el.className = "job";
    el.id = "job-" + video.id;
    el.innerHTML =
      '<div><div class="prompt"></div><div class="muted meta"></div>' +
      '<progress max="100" value="0"></progress> <span class="status"></span></div>' +
      '<div><button class="delete">Delete</button></div><div class="player"></div>';
    el.querySelector(".prompt").textContent = video.prompt;
    el.querySelector(".delete").addEventListener("click", () => remove(video.id));
    $("jobs").prepend(el);
    entry = { el, video };
    jobs.set(video.id, entry);
  }
  entry.video = video;
  const el = entry.el;
  el.dataset.status = video.status;
  el.dataset.progress = video.progress;
  el.querySelector("progress").value = video.progress;
  const status = el.querySelector(".status");
  status.className = "status " + video.status;
  status.textContent =
    video.status === "failed" ? "failed: " + (video.error?.message || "") :
    video.status === "queued" ? "queued (" + (video.queue_position ?? 0) + " ahead)" :
    video.status + " " + video.progress + "%";
  el.querySelector(".meta").textContent =
    video.size + ", " + video.seconds + " s, seed " + video.seed +
    (video.timings ? ", generated in " + Number(video.timings.generate_s).toFixed(1) + " s, batch " + video.batch_size : "");
  if (video.status === "completed" && !el.querySelector("video")) {
    const player = document.createElement("video");
    player.controls = true;
    player.loop = true;
    player.muted = false;
    player.autoplay = true;
    player.playsInline = true;
    // fetch with the key, then play from a blob URL (a <video src> cannot send the Authorization header)
    fetch("/v1/videos/" + video.id + "/content", { headers: headers() })
      .then((r) => r.blob())
      .then((blob) => {
        player.src = URL.createObjectURL(blob);
        player.play().catch(() => { player.muted = true; player.play().catch(() => {}); });
      });
    el.querySelector(".player").append(player);
  }
}

async function follow(id) {
  // Server-Sent Events over fetch: "event: video\ndata: {...}\n\n" until the job finishes
  const response = await fetch("/v1/videos/" + id + "/events", { headers: headers() });
  if (!response.ok || !response.body) return;
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const event = /^event: (.*)$/m.exec(block)?.[1];
      const data = /^data: (.*)$/m.exec(block)?.[1];
      if (event === "video" && data) render(JSON.parse(data));
      if (event === "deleted") forget(id);
    }
  }
}

function forget(id) {
  const entry = jobs.get(id);
  if (entry) entry.el.remove();
  jobs.delete(id);
}

async function remove(id) {
  try {
    await api("/v1/videos/" + id, { method: "DELETE" });
  } catch (e) {
    $("form-error").textContent = e.message;
  }
  forget(id);
}

async function submit(event) {
  event.preventDefault();
  $("form-error").textContent = "";
  const body = {
    prompt: $("prompt").value,
    size: $("size").value,
    seconds: $("seconds").value,
    seed: Number($("seed").value || 0),
  };
  if ($("steps").value) body.steps = Number($("steps").value);
  if ($("negative_prompt").value) body.negative_prompt = $("negative_prompt").value;
  if ($("audio").checked) body.audio = true;
  try {
    const video = await api("/v1/videos", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    render(video);
    follow(video.id);
  } catch (e) {
    $("form-error").textContent = e.message;
  }
}

async function start() {
  $("api_key").value = localStorage.getItem("lumina_rt_api_key") || "";
  $("api_key").addEventListener("change", () => {
    localStorage.setItem("lumina_rt_api_key", $("api_key").value);
    location.reload();
  });
  $("create").addEventListener("submit", submit);
  try {
    const shapes = (await api("/v1/models")).data[0];
    $("model").textContent = shapes.id + " on " + shapes.backend;
    // new Option(text, value, defaultSelected, selected): both, so the served default is the one shown
    for (const size of shapes.sizes) {
      const chosen = size === shapes.default_size;
      $("size").add(new Option(size, size, chosen, chosen));
    }
    for (const s of shapes.seconds) {
      const chosen = s === shapes.default_seconds;
      $("seconds").add(new Option(s + " s", s, chosen, chosen));
    }
    const list = await api("/v1/videos?limit=20");
    for (const video of list.data.reverse()) {
      render(video);
      if (video.status === "queued" || video.status === "in_progress") follow(video.id);
    }
  } catch (e) {
    $("form-error").textContent = e.message;
  }
}

start();
