/* Safe Markdown for the tutor's answers.
 *
 * The text is HTML-escaped first, so nothing the model writes can become markup; then a small
 * subset is rendered: paragraphs, headings, bullet and numbered lists, code blocks, `code`,
 * **bold**, *italics*, and citation markers [n] as buttons. Links are shown as text with their
 * address (never followed by themselves) and images never load: "[image: alt]".
 */
(function (global) {
  "use strict";

  function escapeHtml(text) {
    return text
      .replace(/&/g, "&amp;")
      .replace(/</g, "&lt;")
      .replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;")
      .replace(/'/g, "&#39;");
  }

  function inline(text, citable) {
    // `text` is escaped already: the patterns below only ever add our own tags.
    var codes = [];
    text = text.replace(/`([^`]+)`/g, function (_, code) {
      codes.push("<code>" + code + "</code>");
      return "\u0000" + (codes.length - 1) + "\u0000";
    });
    text = text.replace(/!\[([^\]]*)\]\(([^)\s]*)\)/g, function (_, alt) {
      return '<span class="image-note">[image: ' + (alt || "no description") + "]</span>";
    });
    text = text.replace(/\[([^\]\d][^\]]*)\]\(([^)\s]+)\)/g, function (_, label, url) {
      return label + ' <span class="link-note">(' + url + ")</span>";
    });
    text = text.replace(/\*\*([^*]+)\*\*/g, "<strong>$1</strong>");
    text = text.replace(/(^|[^*\w])\*([^*\s][^*]*)\*(?!\w)/g, "$1<em>$2</em>");
    text = text.replace(/\[(\d{1,2}(?:\s*,\s*\d{1,2})*)\]/g, function (whole, numbers) {
      return numbers
        .split(",")
        .map(function (n) {
          n = n.trim();
          if (citable && citable.indexOf(Number(n)) !== -1) {
            return '<button type="button" class="cite" data-n="' + n + '" aria-label="Source ' + n + '">[' + n + "]</button>";
          }
          return "[" + n + "]";
        })
        .join("");
    });
    return text.replace(/\u0000(\d+)\u0000/g, function (_, index) {
      return codes[Number(index)];
    });
  }

  function render(source, citable) {
    var lines = escapeHtml(source || "").split("\n");
    var html = [];
    var paragraph = [];
    var list = null;
    var code = null;

    function flushParagraph() {
      if (paragraph.length) {
        html.push("<p>" + inline(paragraph.join(" "), citable) + "</p>");
        paragraph = [];
      }
    }
    function closeList() {
      if (list) {
        html.push("</" + list + ">");
        list = null;
      }
    }

    lines.forEach(function (line) {
      if (code !== null) {
        if (/^\s*```/.test(line)) {
          html.push("<pre><code>" + code.join("\n") + "</code></pre>");
          code = null;
        } else {
          code.push(line);
        }
        return;
      }
      if (/^\s*```/.test(line)) {
        flushParagraph();
        closeList();
        code = [];
        return;
      }
      var heading = /^\s*(#{1,4})\s+(.*)$/.exec(line);
      var bullet = /^\s*[-*+]\s+(.*)$/.exec(line);
      var numbered = /^\s*\d+[.)]\s+(.*)$/.exec(line);
      if (heading) {
        flushParagraph();
        closeList();
        var level = Math.min(6, heading[1].length + 2);
        html.push("<h" + level + ">" + inline(heading[2], citable) + "</h" + level + ">");
      } else if (bullet || numbered) {
        flushParagraph();
        var kind = bullet ? "ul" : "ol";
        if (list !== kind) {
          closeList();
          html.push("<" + kind + ">");
          list = kind;
        }
        html.push("<li>" + inline((bullet || numbered)[1], citable) + "</li>");
      } else if (!line.trim()) {
        flushParagraph();
        closeList();
      } else {
        closeList();
        paragraph.push(line.trim());
      }
    });
    if (code !== null) {
      html.push("<pre><code>" + code.join("\n") + "</code></pre>");
    }
    flushParagraph();
    closeList();
    return html.join("");
  }

  global.TutorMarkdown = { render: render, escapeHtml: escapeHtml };
})(window);
