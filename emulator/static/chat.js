// The web chat of the local Bot API emulator: acts as a Telegram user through /emulator/api/.
"use strict";

const api = "/emulator/api";
const $ = (id) => document.getElementById(id);
const view = { version: null, chatId: null, replyTo: null, seenAnswers: new Set(), poll: null, botId: null,
               status: "emulator" };

// ---- the page's own words, in the language of the "language" menu --------------------------
const UI_TEXT = {
  en: {
    emulator: "local Bot API emulator", connected: "connected", unreachable: "emulator unreachable, retrying…",
    userId: "user id", name: "name", language: "language", chat: "chat",
    languageTitle: "your Telegram language; choosing one with /lang in the chat sets it too",
    privateChat: "private chat with the bot", groupChat: "group chat (-100)",
    drawTitle: "Draw a digit", clear: "Clear", sendDrawing: "Send drawing", drawFirst: "Draw a digit first",
    photoTitle: "Or send a photo", caption: "caption", captionPlaceholder: "the digits in it, e.g. 4271 (optional)",
    asDocument: "send as a file (document)", commands: "Commands", replyingTo: "replying to",
    textPlaceholder: "Message or /command — click a bot message to reply to it", send: "Send",
    empty: "Draw a digit and press “Send drawing”, upload a photo, or type /start.",
    typing: "digitbot is typing…", replyHint: "click to reply to this message",
    enlarge: "click to enlarge", closeImage: "click or press Esc to close",
  },
  zh: {
    emulator: "本地 Bot API 模拟器", connected: "已连接", unreachable: "连不上模拟器，正在重试…",
    userId: "用户 ID", name: "名字", language: "语言", chat: "聊天",
    languageTitle: "你的 Telegram 语言；在聊天里用 /lang 选择语言也会改这里",
    privateChat: "和机器人私聊", groupChat: "群聊 (-100)",
    drawTitle: "写一个数字", clear: "清除", sendDrawing: "发送手写", drawFirst: "请先写一个数字",
    photoTitle: "或者发一张照片", caption: "说明", captionPlaceholder: "照片里的数字，例如 4271（可不填）",
    asDocument: "作为文件发送", commands: "命令", replyingTo: "回复",
    textPlaceholder: "消息或 /命令 — 点机器人的消息可以回复它", send: "发送",
    empty: "写一个数字后点“发送手写”，或上传照片，或输入 /start。",
    typing: "digitbot 正在输入…", replyHint: "点击回复这条消息",
    enlarge: "点击放大", closeImage: "点击或按 Esc 关闭",
  },
};

const uiLanguage = () => ($("user-lang").value.toLowerCase().startsWith("zh") ? "zh" : "en");
const t = (key) => UI_TEXT[uiLanguage()][key] || UI_TEXT.en[key] || key;

function applyUiLanguage() {
  document.documentElement.lang = uiLanguage() === "zh" ? "zh-Hans" : "en";
  for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
  for (const node of document.querySelectorAll("[data-i18n-placeholder]")) node.placeholder = t(node.dataset.i18nPlaceholder);
  for (const node of document.querySelectorAll("[data-i18n-title]")) node.title = t(node.dataset.i18nTitle);
  $("lightbox").title = t("closeImage");
  setStatus(view.status);
}

function setStatus(key) {
  view.status = key;
  $("status").textContent = t(key);
}

// The bot's /lang choice, as the page's language menu says it: "l:<catalogue>" is the callback data of
// the bot's /lang buttons (bot/keyboards.py); `/lang en`, `/lang zh`, `/lang 中文`, ... typed.
const MENU_LANGUAGE = { en: "en", zh: "zh-hans" };

function chosenLanguage(callbackData) {
  const match = /^l:([A-Za-z]+)/.exec(callbackData || "");
  return match ? MENU_LANGUAGE[match[1].toLowerCase()] || null : null;
}

function typedLanguage(text) {
  const match = /^\/lang(?:@\w+)?\s+(\S+)/i.exec(text.trim());
  if (!match) return null;
  const choice = match[1];
  if (choice === "中文") return MENU_LANGUAGE.zh;
  if (choice === "English") return MENU_LANGUAGE.en;
  return MENU_LANGUAGE[choice.replace("_", "-").toLowerCase().split("-")[0]] || null;
}

function followLanguage(value) {
  if (!value || $("user-lang").value === value) return;
  $("user-lang").value = value;
  applyUiLanguage();
  saveUser().catch((error) => toast(error.message, true));  // Telegram's language_code follows too
}

async function call(method, path, body) {
  const options = { method };
  if (body instanceof FormData) options.body = body;
  else if (body !== undefined) {
    options.body = JSON.stringify(body);
    options.headers = { "Content-Type": "application/json" };
  }
  const response = await fetch(`${api}/${path}`, options);
  const payload = await response.json();
  if (!payload.ok) throw new Error(payload.description || `HTTP ${response.status}`);
  return payload.result;
}

function toast(text, isError = false) {
  const box = $("toast");
  box.textContent = text;
  box.className = isError ? "error" : "";
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.hidden = true; }, 3500);
}

const userId = () => Number($("user-id").value);

async function saveUser() {
  if (!(userId() > 0)) return;
  await call("POST", "users", { id: userId(), first_name: $("user-name").value || `User ${userId()}`,
                                language_code: $("user-lang").value });
  let chatId = userId();
  if ($("chat-kind").value === "group") {
    chatId = -100;
    await call("POST", "groups", { chat_id: chatId, title: "Digit club", member_ids: [userId()] });
  }
  if (chatId !== view.chatId) {
    view.chatId = chatId;
    view.version = null;
    setReply(null);
    restartPolling();
  }
}

// ---- rendering -------------------------------------------------------------------------
const ENTITY_TAGS = { bold: "b", italic: "i", underline: "u", strikethrough: "s", code: "code", pre: "pre",
                      spoiler: "span", blockquote: "blockquote", expandable_blockquote: "blockquote" };

const safeUrl = (url) => /^(https?|tg):/i.test(url || "");  // never javascript: or data: links

function renderText(text, entities) {
  // Entity offsets are UTF-16 code units, which is what JavaScript strings index by.
  const root = document.createElement("div");
  root.className = "text";
  let position = 0;
  for (const entity of [...(entities || [])].sort((a, b) => a.offset - b.offset)) {
    if (entity.offset < position) continue;  // nested entities: keep the outer one
    root.append(text.slice(position, entity.offset));
    const tag = entity.type === "text_link" ? "a" : ENTITY_TAGS[entity.type] || "span";
    const node = document.createElement(tag);
    node.textContent = text.slice(entity.offset, entity.offset + entity.length);
    if (tag === "a" && safeUrl(entity.url)) { node.href = entity.url; node.target = "_blank"; node.rel = "noopener"; }
    root.append(node);
    position = entity.offset + entity.length;
  }
  root.append(text.slice(position));
  return root;
}

const images = new Map();  // file_id -> <img>: re-renders reuse loaded images instead of reloading them

function photoElement(sizes) {
  const best = sizes.filter((s) => Math.max(s.width, s.height) <= 1280).pop() || sizes[sizes.length - 1];
  if (images.has(best.file_id)) {
    images.get(best.file_id).title = t("enlarge");
    return images.get(best.file_id);
  }
  const img = document.createElement("img");
  images.set(best.file_id, img);
  img.src = `${api}/files/${best.file_id}`;
  img.alt = "photo";
  img.className = "photo";
  img.addEventListener("click", (event) => { event.stopPropagation(); openLightbox(img); });
  img.title = t("enlarge");
  return img;
}

// ---- tap an image to see it full size (e.g. the /stats chart) -------------------------------
function openLightbox(img) {
  const box = $("lightbox");
  $("lightbox-image").src = img.src;
  $("lightbox-image").alt = img.alt;
  box.hidden = false;
}

function closeLightbox() {
  $("lightbox").hidden = true;
  $("lightbox-image").removeAttribute("src");
}

function summary(message) {
  if (message.text) return message.text.slice(0, 60);
  if (message.photo) return "[photo]" + (message.caption ? `: ${message.caption.slice(0, 40)}` : "");
  if (message.document) return `[file] ${message.document.file_name || ""}`;
  return "message";
}

function renderKeyboard(message) {
  const keyboard = document.createElement("div");
  keyboard.className = "keyboard";
  for (const row of message.reply_markup.inline_keyboard) {
    const line = document.createElement("div");
    line.className = "keyboard-row";
    for (const button of row) {
      const element = document.createElement("button");
      element.type = "button";
      element.textContent = button.text;
      if (button.url) {
        element.disabled = !safeUrl(button.url);
        element.addEventListener("click", () => window.open(button.url, "_blank", "noopener"));
      }
      else element.addEventListener("click", (event) => { event.stopPropagation(); press(message, button); });
      element.dataset.callback = button.callback_data || "";
      line.append(element);
    }
    keyboard.append(line);
  }
  return keyboard;
}

function renderMessage(message, chat) {
  const fromBot = message.from.is_bot;
  const bubble = document.createElement("div");
  bubble.className = `message ${fromBot ? "bot" : "user"}${message.from.id === userId() ? " mine" : ""}`;
  bubble.dataset.messageId = message.message_id;
  if (chat.type === "group" || !fromBot) {
    const author = document.createElement("div");
    author.className = "author";
    author.textContent = fromBot ? message.from.first_name : `${message.from.first_name} (${message.from.id})`;
    bubble.append(author);
  }
  if (message.reply_to_message) {
    const quote = document.createElement("div");
    quote.className = "quote";
    quote.textContent = summary(message.reply_to_message);
    bubble.append(quote);
  }
  if (message.photo) bubble.append(photoElement(message.photo));
  if (message.document) {
    const doc = document.createElement("div");
    doc.className = "document";
    doc.textContent = `📎 ${message.document.file_name || "file"} (${Math.ceil(message.document.file_size / 1024)} KB)`;
    bubble.append(doc);
    if ((message.document.mime_type || "").startsWith("image/")) bubble.append(photoElement([{ ...message.document, width: 1, height: 1 }]));
  }
  if (message.text) bubble.append(renderText(message.text, message.entities));
  if (message.caption) bubble.append(renderText(message.caption, message.caption_entities));
  if (message.reply_markup && message.reply_markup.inline_keyboard) bubble.append(renderKeyboard(message));
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.textContent = `#${message.message_id} ${new Date(message.date * 1000).toLocaleTimeString()}`
    + (message.edit_date ? " · edited" : "");
  bubble.append(meta);
  if (fromBot) {
    bubble.title = t("replyHint");
    bubble.addEventListener("click", () => setReply(message));
  }
  return bubble;
}

function render(snapshot, initial) {
  const box = $("messages");
  // #messages is a column-reverse box: newest first in the DOM, pinned to the bottom as it grows.
  box.replaceChildren(...snapshot.messages.map((m) => renderMessage(m, snapshot.chat || {})).reverse());
  if (!snapshot.messages.length) {
    const hint = document.createElement("p");
    hint.className = "muted empty";
    hint.textContent = t("empty");
    box.replaceChildren(hint);
  }
  const typing = $("typing");
  typing.hidden = !snapshot.chat_action;
  typing.textContent = snapshot.chat_action === "typing" ? t("typing") : `digitbot: ${snapshot.chat_action}…`;
  for (const answer of snapshot.callback_answers) {
    if (!answer.answered || view.seenAnswers.has(answer.callback_query_id)) continue;
    view.seenAnswers.add(answer.callback_query_id);
    if (answer.user_id !== userId()) continue;
    // The bot answered this user's /lang button: the language menu (and the page) follow the choice,
    // also when the page is opened later on this chat.
    followLanguage(chosenLanguage(answer.data));
    if (initial || !answer.text) continue;  // not news to this user
    if (answer.show_alert) alert(answer.text);
    else toast(answer.text);
  }
}

// ---- long polling ----------------------------------------------------------------------
function restartPolling() {
  if (view.poll) view.poll.abort();
  const controller = new AbortController();
  view.poll = controller;
  pollLoop(controller.signal, view.chatId);
}

async function pollLoop(signal, chatId) {
  while (!signal.aborted) {
    try {
      const query = view.version === null ? "" : `?since=${view.version}&timeout=25`;
      const response = await fetch(`${api}/chats/${chatId}/messages${query}`, { signal });
      const payload = await response.json();
      if (signal.aborted || chatId !== view.chatId) return;
      const initial = view.version === null;
      view.version = payload.result.version;
      render(payload.result, initial);
      setStatus("connected");
    } catch (error) {
      if (signal.aborted) return;
      setStatus("unreachable");
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  }
}

// ---- actions ---------------------------------------------------------------------------
function setReply(message) {
  view.replyTo = message ? message.message_id : null;
  $("reply-bar").hidden = !message;
  $("reply-preview").textContent = message ? `#${message.message_id}: ${summary(message)}` : "";
  if (message) $("text").focus();
}

async function press(message, button) {
  try {
    await call("POST", `chats/${view.chatId}/press`, { user_id: userId(), message_id: message.message_id,
                                                       data: button.callback_data });
  } catch (error) { toast(error.message, true); }
}

async function sendFile(blob, fileName, asDocument, caption = "") {
  const form = new FormData();
  form.append("user_id", String(userId()));
  form.append("as_document", asDocument ? "true" : "false");
  if (caption.trim()) form.append("caption", caption.trim());
  if (view.replyTo) form.append("reply_to", String(view.replyTo));
  form.append("file", blob, fileName);
  try {
    await call("POST", `chats/${view.chatId}/file`, form);
    setReply(null);
    return true;
  } catch (error) { toast(error.message, true); return false; }
}

async function sendText(event) {
  event.preventDefault();
  const text = $("text").value;
  if (!text.trim()) return;
  try {
    await call("POST", `chats/${view.chatId}/text`, { user_id: userId(), text, reply_to: view.replyTo });
    $("text").value = "";
    setReply(null);
    followLanguage(typedLanguage(text));
  } catch (error) { toast(error.message, true); }
}

// ---- drawing pad (pointer events cover mouse, pen and touch) ---------------------------
function setUpPad() {
  const pad = $("pad");
  const ctx = pad.getContext("2d");
  const clear = () => { ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, pad.width, pad.height); pad.dataset.empty = "1"; };
  clear();
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  let last = null;
  const point = (event) => {
    const box = pad.getBoundingClientRect();
    return [(event.clientX - box.left) * pad.width / box.width, (event.clientY - box.top) * pad.height / box.height];
  };
  pad.addEventListener("pointerdown", (event) => {
    try { pad.setPointerCapture(event.pointerId); } catch (error) { /* synthetic or finished pointer */ }
    last = point(event);
    pad.dataset.empty = "";
  });
  pad.addEventListener("pointermove", (event) => {
    if (!last) return;
    const next = point(event);
    ctx.strokeStyle = "#111";
    ctx.lineWidth = 18;
    ctx.beginPath();
    ctx.moveTo(...last);
    ctx.lineTo(...next);
    ctx.stroke();
    last = next;
  });
  const stop = () => { last = null; };
  pad.addEventListener("pointerup", stop);
  pad.addEventListener("pointercancel", stop);
  $("clear").addEventListener("click", clear);
  $("send-drawing").addEventListener("click", () => {
    if (pad.dataset.empty) { toast(t("drawFirst"), true); return; }
    pad.toBlob((blob) => sendFile(blob, "drawing.png", false), "image/png");
  });
}

async function start() {
  setUpPad();
  $("text-form").addEventListener("submit", sendText);
  $("reply-cancel").addEventListener("click", () => setReply(null));
  $("file").addEventListener("change", async () => {
    const file = $("file").files[0];
    $("file").value = "";
    // The caption goes with the photo, as in Telegram: digits only ("4271") record the reading at once.
    if (file && await sendFile(file, file.name, $("as-document").checked, $("caption").value)) $("caption").value = "";
  });
  $("lightbox").addEventListener("click", closeLightbox);
  document.addEventListener("keydown", (event) => { if (event.key === "Escape" && !$("lightbox").hidden) closeLightbox(); });
  $("user-lang").addEventListener("change", applyUiLanguage);
  applyUiLanguage();
  for (const id of ["user-id", "user-name", "user-lang", "chat-kind"]) {
    $(id).addEventListener("change", () => saveUser().catch((error) => toast(error.message, true)));
  }
  $("who").addEventListener("submit", (event) => event.preventDefault());
  try {
    const info = await call("GET", "info");
    view.botId = info.bot.id;
    $("bot-name").textContent = info.bot.first_name;
    if (info.commands.length) {
      $("commands").hidden = false;
      $("command-list").replaceChildren(...info.commands.map((command) => {
        const button = document.createElement("button");
        button.type = "button";
        button.textContent = `/${command.command}`;
        button.title = command.description;
        button.addEventListener("click", () => { $("text").value = `/${command.command}`; $("text").focus(); });
        return button;
      }));
    }
    await saveUser();
  } catch (error) { toast(`emulator unreachable: ${error.message}`, true); }
}

start();
