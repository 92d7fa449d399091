//! The directory document: stored whole, versioned on every import.

use spean_broker::directory::Directory;

use super::fixture::Fixture;

pub(super) async fn the_directory_round_trips_and_versions(f: Fixture) {
    let store = f.store.clone();
    assert!(store.directory().await.unwrap().is_none());
    let dir = Directory::from_json(include_bytes!("../../../../fixtures/network.json")).unwrap();
    assert_eq!(store.import_directory(&dir).await.unwrap(), 1);
    assert_eq!(store.import_directory(&dir).await.unwrap(), 2);
    let (got, version) = store.directory().await.unwrap().unwrap();
    assert_eq!(version, 2);
    assert_eq!(got.agencies.len(), dir.agencies.len());
    let pailin = got.provinces.iter().find(|p| p.code == "24").unwrap();
    assert_eq!(pailin.name_km, "ប៉ៃលិន");
}
