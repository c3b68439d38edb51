// A list RPC read to its end: follows next_page_token. A bound keeps a misbehaving server
// from looping the page forever.
const MAX_PAGES = 50;

export async function allPages<T>(page: (pageToken: string) => Promise<{ items: T[]; next: string }>): Promise<T[]> {
  const items: T[] = [];
  let token = "";
  for (let i = 0; i < MAX_PAGES; i++) {
    const reply = await page(token);
    items.push(...reply.items);
    if (!reply.next) break;
    token = reply.next;
  }
  return items;
}
