/* The chat page: one websocket to /ws/chat/<conversation>/ (protocol in tutoring/consumers.py).
 *
 * Streams answers as they are written, re-renders them as safe Markdown (markdown.js), shows
 * each answer's mode and why, its citations (the passage opens on click), check-question cards
 * and the mastery meter. A lost connection is reopened with the last message id seen, so the
 * server sends what was missed; a question sent while offline goes out on reconnect with the
 * same client id (the server never takes it twice).
 */
(function () {
  "use strict";

  var config = JSON.parse(document.getElementById("chat-settings").textContent);
  var transcript = document.getElementById("transcript");
  var form = document.getElementById("composer");
  var input = document.getElementById("question");
  var sendButton = document.getElementById("send");
  var stopButton = document.getElementById("stop");
  var connection = document.getElementById("connection");
  var emptyNote = document.getElementById("empty-note");

  var socket = null;
  var lastId = 0;
  var retry = 0;
  var outbox = []; // frames waiting for a connection
  var answers = {}; // message id -> {node, text, message}
  var checks = {}; // check id -> node
  var streaming = null; // the answer id being written
  var sending = null; // {clientId, text, node}: a question the server has not saved yet

  function newClientId() {
    if (window.crypto && window.crypto.randomUUID) {
      return window.crypto.randomUUID();
    }
    return Date.now().toString(36) + Math.random().toString(36).slice(2);
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setConnection(state, text) {
    connection.textContent = text;
    connection.dataset.state = state;
  }

  function scrollDown() {
    transcript.scrollTop = transcript.scrollHeight;
  }

  function setBusy(answerId) {
    streaming = answerId;
    stopButton.disabled = answerId === null;
    sendButton.disabled = answerId !== null;
  }

  // ---------------------------------------------------------------- rendering

  function addQuestion(message) {
    if (document.getElementById("message-" + message.id)) return;
    if (emptyNote) emptyNote.remove();
    var item = el("li", "turn question");
    item.id = "message-" + message.id;
    item.appendChild(el("span", "who", "You"));
    item.appendChild(el("p", "text", message.content));
    transcript.appendChild(item);
    lastId = Math.max(lastId, message.id);
  }

  // The question shows at once, marked as being sent: the server saves it only after it has
  // searched the material (the first question of a server also loads the search model).
  function addSending(clientId, text) {
    if (emptyNote) emptyNote.remove();
    var item = el("li", "turn question sending");
    item.setAttribute("aria-busy", "true");
    item.appendChild(el("span", "who", "You"));
    item.appendChild(el("p", "text", text));
    item.appendChild(el("p", "status meta small", "Sending…"));
    transcript.appendChild(item);
    sending = { clientId: clientId, text: text, node: item };
    scrollDown();
  }

  function clearSending(restore) {
    if (!sending) return;
    sending.node.remove();
    if (restore && !input.value.trim()) input.value = sending.text;
    sending = null;
  }

  function citedNumbers(message) {
    return (message.citations || []).map(function (c) {
      return c.n;
    });
  }

  function ensureAnswer(message) {
    var known = answers[message.id];
    if (known) return known;
    if (emptyNote) emptyNote.remove();
    var item = el("li", "turn answer");
    item.id = "message-" + message.id;
    item.setAttribute("aria-busy", "true");
    var head = el("div", "answer-head");
    head.appendChild(el("span", "who", "Tutor"));
    var badge = el("span", "badge");
    head.appendChild(badge);
    item.appendChild(head);
    var reason = el("p", "mode-reason meta small");
    item.appendChild(reason);
    // "From your course material": verbatim passage sentences, before the model's words.
    var extract = el("div", "extract");
    item.appendChild(extract);
    var body = el("div", "text markdown");
    item.appendChild(body);
    // The model's sentences that the support check could not find in the passages.
    var unsupported = el("div", "not-found");
    unsupported.hidden = true;
    item.appendChild(unsupported);
    var status = el("p", "status meta small");
    item.appendChild(status);
    var sources = el("div", "sources");
    item.appendChild(sources);
    transcript.appendChild(item);
    known = { node: item, badge: badge, reason: reason, extract: extract, body: body, unsupported: unsupported, status: status, sources: sources, text: "", marks: [], message: message };
    answers[message.id] = known;
    describe(known, message);
    return known;
  }

  function describe(answer, message) {
    answer.message = message;
    if (message.mode) {
      answer.badge.textContent = message.mode;
      answer.badge.className = "badge mode-" + message.mode;
    }
    answer.reason.textContent = message.mode_reason || "";
    answer.node.classList.toggle("uncovered", message.covered === false);
    if (message.support && message.support.length) answer.marks = message.support.slice();
    renderExtract(answer, message.extract || []);
    renderSources(answer, message.citations || [], message.covered === false);
  }

  // ---------------------------------------------------------------- support marks

  function addMarks(messageId, marks) {
    var answer = answers[messageId];
    if (!answer) return;
    answer.marks = answer.marks.concat(marks);
    renderBody(answer);
  }

  // Wraps the start of each unsupported sentence in the rendered text (a sentence can cross
  // formatting, so the mark covers the part of it within one text node), and lists them all.
  function applyMarks(answer) {
    var missing = answer.marks.filter(function (mark) { return !mark.supported; });
    missing.forEach(function (mark) {
      var probe = mark.sentence.split("[")[0].trim().slice(0, 60);
      if (probe.length < 8) return;
      var walker = document.createTreeWalker(answer.body, NodeFilter.SHOW_TEXT);
      var node;
      while ((node = walker.nextNode())) {
        if (node.parentNode.closest && node.parentNode.closest("mark")) continue;
        var at = node.data.indexOf(probe);
        if (at < 0) continue;
        var rest = node.data.slice(at);
        var end = rest.indexOf(mark.sentence) === 0 ? mark.sentence.length : rest.length;
        var range = document.createRange();
        range.setStart(node, at);
        range.setEnd(node, at + end);
        var marker = el("mark", "unsupported");
        marker.title = "Not found in your course material";
        range.surroundContents(marker);
        break;
      }
    });
    answer.unsupported.textContent = "";
    answer.unsupported.hidden = !missing.length;
    if (!missing.length) return;
    answer.unsupported.appendChild(el("p", "not-found-title small", "⚠ Not found in your course material — check these against your sources:"));
    var list = el("ul", "not-found-list small");
    var listed = {};
    missing.forEach(function (mark) {
      // A sentence the model wrote twice is listed once (both are highlighted).
      if (listed[mark.sentence]) return;
      listed[mark.sentence] = true;
      var item = el("li");
      item.appendChild(el("span", "said", mark.sentence));
      var why = whyMarked(mark);
      item.appendChild(el("span", "why", " — " + why + "."));
      // The passage sentence it speaks of, to compare with; none where no passage does.
      if (mark.closest && why !== NOWHERE) {
        item.appendChild(el("span", "closest", "The material says: “" + mark.closest + "”"));
      }
      list.appendChild(item);
    });
    answer.unsupported.appendChild(list);
  }

  var NOWHERE = "no passage of the material says this";

  // Why the check marked a sentence, from its signals (tutoring/support.py).
  function whyMarked(mark) {
    if (mark.missing_figures && mark.missing_figures.length) {
      return "the material does not give " + mark.missing_figures.join(", ");
    }
    if (mark.overstated && mark.overstated.length) {
      return "the material does not say “" + mark.overstated.join("”, “") + "”";
    }
    if (mark.negation_flipped || (mark.opposed && mark.opposed.length)) {
      return "the material says the opposite";
    }
    return NOWHERE;
  }

  function renderExtract(answer, quotes) {
    answer.extract.textContent = "";
    if (!quotes.length) return;
    answer.extract.appendChild(el("p", "extract-title small", "From your course material"));
    quotes.forEach(function (quote) {
      var block = el("blockquote", "quote");
      block.appendChild(document.createTextNode(quote.text + " "));
      var cite = el("button", "cite", "[" + quote.n + "]");
      cite.type = "button";
      cite.dataset.n = quote.n;
      cite.setAttribute("aria-label", "Source " + quote.n);
      block.appendChild(cite);
      answer.extract.appendChild(block);
    });
    answer.extract.appendChild(el("p", "extract-title small", "The tutor's explanation"));
  }

  // "[2] Pump care · Priming > Steps": a Markdown section path starts with the document's own
  // heading, which is most often its title too; it is not repeated.
  function sourceLabel(citation) {
    var name = citation.document || citation.filename;
    var where = citation.locator || "";
    var prefix = name.toLowerCase() + " > ";
    if (where.toLowerCase() === name.toLowerCase()) {
      where = "";
    } else if (where.toLowerCase().indexOf(prefix) === 0) {
      where = where.slice(prefix.length);
    }
    return "[" + citation.n + "] " + name + (where ? " · " + where : "");
  }

  function renderSources(answer, citations, closest) {
    answer.sources.textContent = "";
    if (!citations.length) return;
    answer.sources.appendChild(el("p", "sources-title small", closest ? "The closest sections of your course material" : "Sources from your course material"));
    var list = el("ol", "citations");
    citations.forEach(function (citation) {
      var entry = el("li");
      var details = el("details");
      details.id = "source-" + answer.message.id + "-" + citation.n;
      var summary = el("summary");
      summary.textContent = sourceLabel(citation);
      details.appendChild(summary);
      details.appendChild(el("blockquote", "passage", citation.text));
      entry.appendChild(details);
      list.appendChild(entry);
    });
    answer.sources.appendChild(list);
  }

  function renderBody(answer) {
    answer.body.innerHTML = window.TutorMarkdown.render(answer.text, citedNumbers(answer.message));
    applyMarks(answer);
  }

  var STATUS_TEXT = {
    pending: "Waiting for the tutor…",
    started: "The tutor is reading your question and the material…",
    streaming: "Writing…",
    length: "The answer reached its length limit.",
    stopped: "You stopped this answer.",
    timeout: "The answer took too long and was cut short.",
  };

  function finishAnswer(message) {
    var answer = ensureAnswer(message);
    describe(answer, message);
    answer.text = message.content || "";
    renderBody(answer);
    answer.node.setAttribute("aria-busy", "false");
    answer.node.dataset.status = message.status;
    if (message.status === "error") {
      answer.status.textContent = "Something went wrong: " + (message.error || "unknown error") + " You can ask again.";
      answer.status.className = "status error";
      answer.status.setAttribute("role", "alert");
    } else {
      answer.status.textContent = STATUS_TEXT[message.status] || "";
      answer.status.className = "status meta small";
    }
    lastId = Math.max(lastId, message.id);
    if (streaming === message.id) setBusy(null);
    scrollDown();
  }

  function addTokens(messageId, text) {
    var answer = answers[messageId];
    if (!answer) return;
    answer.text += text;
    answer.status.textContent = "";
    renderBody(answer);
    scrollDown();
  }

  // ---------------------------------------------------------------- check questions

  function renderCheck(check) {
    var card = checks[check.id];
    var anchor = answers[check.after] ? answers[check.after].node : null;
    if (!card) {
      card = el("li", "turn check card");
      card.id = "check-" + check.id;
      checks[check.id] = card;
      if (anchor && anchor.nextSibling) {
        transcript.insertBefore(card, anchor.nextSibling);
      } else {
        transcript.appendChild(card);
      }
    }
    card.textContent = "";
    card.dataset.status = check.status;
    var title = el("p", "check-title");
    title.appendChild(el("strong", null, "Check your understanding"));
    title.appendChild(document.createTextNode(" · " + check.skill + (check.generated ? " · made from the passage, not yet reviewed by your instructor" : "")));
    card.appendChild(title);
    var stemId = "check-stem-" + check.id;
    var stem = el("p", "stem", check.stem);
    stem.id = stemId;
    card.appendChild(stem);

    if (check.status === "graded") {
      var verdict = el("p", check.correct ? "verdict right" : "verdict wrong");
      verdict.setAttribute("role", "status");
      verdict.textContent = (check.correct ? "✓ Right. " : "✗ Not quite. ") + (check.reason || "");
      card.appendChild(verdict);
      card.appendChild(el("p", "meta small", "Your answer: " + check.response));
      if (!check.correct && check.answer) {
        card.appendChild(el("p", "meta small", "Expected: " + check.answer));
      }
      if (check.p_before !== null && check.p_after !== null) {
        card.appendChild(el("p", "meta small", "Mastery of " + check.skill + ": " + Math.round(check.p_before * 100) + "% → " + Math.round(check.p_after * 100) + "%"));
      }
      if (check.extract && check.extract.length) {
        var feedback = el("div", "extract feedback");
        feedback.appendChild(el("p", "extract-title small", "From your course material"));
        check.extract.forEach(function (quote) {
          var block = el("blockquote", "quote", quote.text);
          block.appendChild(el("span", "quote-source small", " — " + sourceLabel({ n: quote.n, document: quote.document, filename: quote.filename, locator: quote.locator }).replace(/^\[\d+\] /, "")));
          feedback.appendChild(block);
        });
        card.appendChild(feedback);
      }
      return;
    }
    var answerForm = el("form", "check-form");
    answerForm.setAttribute("aria-describedby", stemId);
    if (check.kind === "mc") {
      var fieldset = el("fieldset");
      fieldset.appendChild(el("legend", "visually-hidden", "Choices"));
      check.choices.forEach(function (choice, index) {
        var label = el("label", "choice");
        var radio = el("input");
        radio.type = "radio";
        radio.name = "choice-" + check.id;
        radio.value = choice;
        radio.required = true;
        if (index === 0) radio.id = "check-" + check.id + "-first";
        label.appendChild(radio);
        label.appendChild(document.createTextNode(" " + choice));
        fieldset.appendChild(label);
      });
      answerForm.appendChild(fieldset);
    } else {
      var label = el("label", "visually-hidden", "Your answer");
      label.htmlFor = "check-" + check.id + "-text";
      answerForm.appendChild(label);
      var text = el("input");
      text.type = "text";
      text.id = "check-" + check.id + "-text";
      text.maxLength = 1000;
      text.required = true;
      text.placeholder = "Your answer in a sentence";
      answerForm.appendChild(text);
    }
    var submit = el("button", null, check.status === "grading" ? "Grading…" : "Check answer");
    submit.type = "submit";
    submit.disabled = check.status === "grading";
    answerForm.appendChild(submit);
    var problem = el("p", "check-problem error");
    problem.hidden = true;
    problem.setAttribute("role", "alert");
    answerForm.appendChild(problem);
    answerForm.addEventListener("submit", function (event) {
      event.preventDefault();
      var value;
      if (check.kind === "mc") {
        var picked = answerForm.querySelector("input[type=radio]:checked");
        value = picked ? picked.value : "";
      } else {
        value = answerForm.querySelector("input[type=text]").value;
      }
      if (!value.trim()) return;
      submit.disabled = true;
      submit.textContent = "Grading…";
      send({ type: "answer", check: check.id, text: value });
    });
    card.appendChild(answerForm);
  }

  function checkProblem(checkId, text) {
    var card = checks[checkId];
    if (!card) return false;
    var problem = card.querySelector(".check-problem");
    var submit = card.querySelector("button[type=submit]");
    if (problem) {
      problem.textContent = text;
      problem.hidden = false;
    }
    if (submit) {
      submit.disabled = false;
      submit.textContent = "Check answer";
    }
    return true;
  }

  function updateMastery(mastery) {
    var row = document.querySelector('#mastery .skill[data-skill="' + mastery.skill_id + '"]');
    if (!row) return;
    var meter = row.querySelector("meter");
    meter.value = mastery.p_known;
    meter.textContent = Math.round(mastery.p_known * 100) + "%";
    row.querySelector(".value").textContent = Math.round(mastery.p_known * 100) + "%";
    row.querySelector(".mode").textContent = mastery.mode;
    row.classList.add("changed");
    setTimeout(function () {
      row.classList.remove("changed");
    }, 1500);
  }

  // ---------------------------------------------------------------- the socket

  function notice(text) {
    var item = el("li", "turn notice error", text);
    item.setAttribute("role", "alert");
    transcript.appendChild(item);
    scrollDown();
  }

  function handle(frame) {
    switch (frame.type) {
      case "history":
        frame.messages.forEach(function (message) {
          if (message.role === "user") {
            if (sending && message.client_id === sending.clientId) clearSending(false);
            addQuestion(message);
          } else if (message.status === "pending" || message.status === "streaming") {
            var answer = ensureAnswer(message);
            answer.text = message.content || "";
            renderBody(answer);
            answer.status.textContent = STATUS_TEXT[message.status];
            setBusy(message.id);
            lastId = Math.max(lastId, message.id - 1);
          } else {
            finishAnswer(message);
          }
        });
        (frame.checks || []).forEach(renderCheck);
        scrollDown();
        break;
      case "question":
        if (sending && frame.message.client_id === sending.clientId) clearSending(false);
        addQuestion(frame.message);
        if (frame.repeat && frame.answer.status !== "pending" && frame.answer.status !== "streaming") {
          finishAnswer(frame.answer);
        } else {
          var started = ensureAnswer(frame.answer);
          started.status.textContent = STATUS_TEXT.pending;
          setBusy(frame.answer.id);
        }
        scrollDown();
        break;
      case "started":
        // A worker has taken the question; a small model on a busy CPU reads a long prompt
        // for a while before its first word.
        if (frame.message_id !== null && answers[frame.message_id] && !answers[frame.message_id].text) {
          answers[frame.message_id].status.textContent = STATUS_TEXT.started;
        }
        break;
      case "token":
        if (frame.message_id !== null) addTokens(frame.message_id, frame.text);
        break;
      case "support":
        if (frame.message_id !== null) addMarks(frame.message_id, frame.marks);
        break;
      case "done":
        finishAnswer(frame.message);
        break;
      case "check":
        renderCheck(frame.check);
        scrollDown();
        break;
      case "graded":
        renderCheck(frame.check);
        updateMastery(frame.mastery);
        break;
      case "error":
        if (frame.check === undefined || !checkProblem(frame.check, frame.error)) {
          // A refused question goes back into the composer, so it is not typed again.
          if (frame.check === undefined) clearSending(true);
          notice(frame.error);
        }
        if (streaming === null) sendButton.disabled = false;
        break;
    }
  }

  function send(frame) {
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify(frame));
    } else {
      outbox.push(frame);
    }
  }

  function connect() {
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    setConnection("connecting", retry ? "Reconnecting…" : "Connecting…");
    socket = new WebSocket(scheme + window.location.host + config.socketPath + "?after=" + lastId);
    socket.addEventListener("open", function () {
      retry = 0;
      setConnection("open", "Connected");
      var waiting = outbox;
      outbox = [];
      waiting.forEach(send);
    });
    socket.addEventListener("message", function (event) {
      handle(JSON.parse(event.data));
    });
    socket.addEventListener("close", function (event) {
      if (event.code === 4403) {
        setConnection("closed", "Not allowed: sign in again");
        return;
      }
      retry += 1;
      var wait = Math.min(10000, 500 * Math.pow(2, retry - 1));
      setConnection("closed", "Connection lost; retrying in " + Math.round(wait / 1000) + " s");
      setTimeout(connect, wait);
    });
  }

  // ---------------------------------------------------------------- the composer

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var text = input.value.trim();
    if (!text || streaming !== null || sending !== null) return;
    sendButton.disabled = true;
    var clientId = newClientId();
    addSending(clientId, text);
    send({ type: "ask", text: text, client_id: clientId });
    input.value = "";
  });
  input.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit ? form.requestSubmit() : form.dispatchEvent(new Event("submit"));
    }
  });
  stopButton.addEventListener("click", function () {
    send({ type: "stop" });
    stopButton.disabled = true;
  });
  transcript.addEventListener("click", function (event) {
    var button = event.target.closest("button.cite");
    if (!button) return;
    var answer = button.closest(".answer");
    var details = answer && answer.querySelector("#source-" + answer.id.replace("message-", "") + "-" + button.dataset.n);
    if (details) {
      details.open = true;
      details.querySelector("summary").focus();
    }
  });

  connect();
})();
