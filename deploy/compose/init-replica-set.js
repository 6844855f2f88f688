// Initiates compose's single-node replica set once (transactions need a replica set), then
// waits until the node is primary. Safe to run again.
try {
  rs.status();
} catch (error) {
  if (error.codeName !== "NotYetInitialized") {
    throw error;
  }
  rs.initiate({ _id: "rs0", members: [{ _id: 0, host: "mongo:27017" }] });
}
let waited = 0;
while (!db.hello().isWritablePrimary) {
  if (waited >= 60) {
    throw new Error("replica set rs0 elected no primary within 60 s");
  }
  sleep(1000);
  waited += 1;
}
print("replica set rs0 ready");
