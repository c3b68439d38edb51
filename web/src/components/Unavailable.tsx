// Said plainly when a view's backend is missing or refuses: never made-up data in its place.
export function Unavailable({ what, why }: { what: string; why: string }) {
  return (
    <div className="unavailable" role="status">
      <strong>{what} is not available.</strong> <span>{why}</span>
    </div>
  );
}
