/** "." and "..", the names a directory lists for itself and its parent. */
export function isDotName(name: Uint8Array): boolean {
  return name.length <= 2 && name[0] === 0x2e && (name.length === 1 || name[1] === 0x2e);
}
