// "Previous page" / "Next page" for a paged list. Each button's name says which list it
// pages, since one screen can hold several.
export function Pager({
  what,
  page,
  hasNext,
  busy,
  onPrevious,
  onNext,
}: {
  what: string;
  page: number;
  hasNext: boolean;
  busy?: boolean;
  onPrevious(): void;
  onNext(): void;
}) {
  if (page <= 1 && !hasNext) return null;
  return (
    <nav className="row admin-pager" aria-label={`Pages of ${what}`}>
      <button
        type="button"
        className="btn btn-small"
        disabled={page <= 1 || busy}
        onClick={onPrevious}
        aria-label={`Previous page of ${what}`}
      >
        Previous page
      </button>
      <span className="muted small">Page {page}</span>
      <button
        type="button"
        className="btn btn-small"
        disabled={!hasNext || busy}
        onClick={onNext}
        aria-label={`Next page of ${what}`}
      >
        Next page
      </button>
    </nav>
  );
}
