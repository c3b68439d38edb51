// Ctrl/Cmd-K from anywhere: a searchable list of what can be done now. Arrow keys move,
// Enter runs, Escape closes; focus returns where it was.
import { useEffect, useMemo, useRef, useState } from "react";
import { usePalette, type PaletteAction } from "../lib/palette";
import { summary } from "../lib/errors";

function matches(action: PaletteAction, query: string): boolean {
  const haystack = `${action.group} ${action.title} ${action.keywords ?? ""}`.toLowerCase();
  return query
    .toLowerCase()
    .split(/\s+/)
    .filter(Boolean)
    .every((word) => haystack.includes(word));
}

export function Palette() {
  const { actions } = usePalette();
  const [open, setOpen] = useState(false);
  const [query, setQuery] = useState("");
  const [active, setActive] = useState(0);
  const [status, setStatus] = useState("");
  const input = useRef<HTMLInputElement>(null);
  const returnFocus = useRef<Element | null>(null);

  useEffect(() => {
    const onKey = (event: KeyboardEvent) => {
      if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "k") {
        event.preventDefault();
        setOpen((was) => {
          if (!was) returnFocus.current = document.activeElement;
          return !was;
        });
      }
    };
    const onOpen = () => {
      returnFocus.current = document.activeElement;
      setOpen(true);
    };
    window.addEventListener("keydown", onKey);
    window.addEventListener("skm:open-palette", onOpen);
    return () => {
      window.removeEventListener("keydown", onKey);
      window.removeEventListener("skm:open-palette", onOpen);
    };
  }, []);

  useEffect(() => {
    if (open) {
      setQuery("");
      setActive(0);
      setStatus("");
      setTimeout(() => input.current?.focus(), 0);
    } else if (returnFocus.current instanceof HTMLElement) {
      returnFocus.current.focus();
    }
  }, [open]);

  const shown = useMemo(() => actions.filter((a) => matches(a, query)).slice(0, 50), [actions, query]);

  if (!open) return null;

  const run = async (action: PaletteAction | undefined) => {
    if (!action) return;
    setStatus(`${action.title}…`);
    try {
      await action.run();
      setOpen(false);
    } catch (error) {
      setStatus(summary(error));
    }
  };

  return (
    <div className="palette-backdrop" onMouseDown={() => setOpen(false)}>
      <div
        className="palette"
        role="dialog"
        aria-modal="true"
        aria-label="Quick actions"
        onMouseDown={(event) => event.stopPropagation()}
      >
        <input
          ref={input}
          type="search"
          aria-label="Search actions"
          aria-controls="palette-list"
          aria-activedescendant={shown[active] ? `palette-${shown[active].id}` : undefined}
          placeholder="Type an action… (Esc closes)"
          value={query}
          onChange={(event) => {
            setQuery(event.target.value);
            setActive(0);
          }}
          onKeyDown={(event) => {
            if (event.key === "Escape") setOpen(false);
            else if (event.key === "ArrowDown") {
              event.preventDefault();
              setActive((i) => Math.min(i + 1, shown.length - 1));
            } else if (event.key === "ArrowUp") {
              event.preventDefault();
              setActive((i) => Math.max(i - 1, 0));
            } else if (event.key === "Enter") {
              event.preventDefault();
              void run(shown[active]);
            }
          }}
        />
        <ul id="palette-list" role="listbox" aria-label="Actions">
          {shown.map((action, index) => (
            <li
              key={action.id}
              id={`palette-${action.id}`}
              role="option"
              aria-selected={index === active}
              className={index === active ? "active" : ""}
              onMouseEnter={() => setActive(index)}
              onClick={() => void run(action)}
            >
              <span className="muted">{action.group}</span> {action.title}
            </li>
          ))}
          {shown.length === 0 && <li className="muted">No action matches.</li>}
        </ul>
        <p className="palette-status" role="status">
          {status}
        </p>
      </div>
    </div>
  );
}
